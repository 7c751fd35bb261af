"""The package version (one place: the facade, the environment records and packaging read it)."""

__version__ = "0.1.0"
