"""``medadapt export vllm SAVE OUT [--stages ...] [--max-lora-rank N] [--drop-non-language]``."""

from __future__ import annotations

import argparse
from typing import Any

from .vllm import VLLM_MAX_LORA_RANKS, export_vllm


def add_export_commands(commands: Any) -> None:
    """Register ``export`` and its sub-commands on the ``medadapt`` parser's sub-parsers ``commands``."""
    export = commands.add_parser("export", help="write a save's stages for a serving engine")
    kinds = export.add_subparsers(dest="export_kind", required=True)
    vllm = kinds.add_parser("vllm", help="one peft folder per generative stage, for vllm serve --enable-lora --lora-modules")
    vllm.add_argument("save", help="a medadapt save folder (save_pretrained / a training run's output)")
    vllm.add_argument("out", help="folder to write (replaced atomically)")
    vllm.add_argument("--stages", nargs="+", help="stages to export (default: every stage)")
    vllm.add_argument("--max-lora-rank", type=int, default=16, choices=VLLM_MAX_LORA_RANKS,
                      help="vLLM's --max-lora-rank; stages of a higher rank are refused (default 16, vLLM's default)")
    vllm.add_argument("--drop-non-language", action="store_true",
                      help="drop LoRA tensors outside the language model (image tower, projector) instead of refusing")
    vllm.set_defaults(run=_run_vllm)


def _run_vllm(args: argparse.Namespace) -> int:
    result = export_vllm(args.save, args.out, stages=args.stages, max_lora_rank=args.max_lora_rank,
                         drop_non_language=args.drop_non_language)
    for name, modules in result.dropped.items():
        print(f"note: stage {name!r}: dropped LoRA on {len(modules)} module(s) outside the language model, e.g. {modules[0]}")
    print(f"wrote {len(result.stages)} stage(s) to {result.out}; serve them with:\n")
    print(result.command())
    return 0
