"""acme-treadle-csv: a treadle reporter plugin (see hooks.py for what it registers)."""
