"""The version of Rivulet (pyproject.toml reads it from here)."""

__version__ = "0.14.0"
