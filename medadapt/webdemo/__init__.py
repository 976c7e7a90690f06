"""The Gradio demo page (``medadapt demo SAVE_OR_HUB_ID``; optional ``[demo]`` extra). See :mod:`.app`."""

from .app import NOT_FOR_CLINICAL_USE, Analysis, DemoService, build_demo
from .inputs import MAX_UPLOAD_BYTES, read_upload

__all__ = ["NOT_FOR_CLINICAL_USE", "MAX_UPLOAD_BYTES", "Analysis", "DemoService", "build_demo", "read_upload"]
