"""The embedded world: procedural road scenes with exact labels and depth (diffeel's default data)."""
