"""The package version (its own module: core and the CLI read it without importing the package root)."""

__version__ = "0.1.0"
