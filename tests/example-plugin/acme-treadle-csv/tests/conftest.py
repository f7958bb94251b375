# The kit's fixtures (treadle_cli, treadle_plugins, ...) and conformance classes.
pytest_plugins = ["treadle.testing"]
