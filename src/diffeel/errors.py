"""Errors a user can cause. The CLI prints them as one sentence and exits non-zero."""


class DiffeelError(Exception):
    """Bad input or a bad request: missing or corrupt files, wrong shapes or values."""
