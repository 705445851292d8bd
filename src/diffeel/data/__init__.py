"""Data on disk: arrays (logits, score maps) and, later, benchmark loaders."""
