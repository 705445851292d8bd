"""Turning results into files: tables (Markdown, LaTeX, CSV), plots and an HTML report."""
