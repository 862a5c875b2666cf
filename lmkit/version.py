"""The lmkit version (one definition: the package, the manifest and pyproject read it)."""

__version__ = "0.4.0"
