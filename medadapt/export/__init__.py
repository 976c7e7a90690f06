"""Exports for serving outside medadapt: a standalone merged transformers checkpoint (:mod:`.merged`) and
per-stage peft folders laid out for vLLM's multi-LoRA serving (:mod:`.vllm`)."""

from .merged import export_merged
from .vllm import VllmExport, export_vllm

__all__ = ["VllmExport", "export_merged", "export_vllm"]
