"""The components treadle ships, registered through the same hooks as any plugin."""
