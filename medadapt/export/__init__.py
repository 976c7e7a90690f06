"""Exports for serving outside medadapt: a standalone merged transformers checkpoint (:mod:`.merged`)."""

from .merged import export_merged

__all__ = ["export_merged"]
