"""The medadapt version (written into manifests and model cards; kept equal to pyproject.toml's)."""

__version__ = "0.1.0"
