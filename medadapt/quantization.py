"""A quantized frozen base (QLoRA): load the base in 4 or 8 bits through bitsandbytes, train LoRA on top.

``ContinualVLM.from_base(source, quantization="4bit")`` (or ``quantization: 4bit`` in a run config)
loads the base with a ``BitsAndBytesConfig`` (NF4 with bfloat16 compute for 4 bits); peft puts its
LoRA layers on the quantized Linear layers as usual. bitsandbytes needs a CUDA GPU (or one of its
other supported backends); without it the error says how to install it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import MissingExtraError, UnsupportedBackboneError

QUANTIZATIONS = ("4bit", "8bit")


def quantization_config(kind: str) -> Any:
    """The transformers ``BitsAndBytesConfig`` for ``kind`` (``"4bit"`` or ``"8bit"``)."""
    if kind not in QUANTIZATIONS:
        raise UnsupportedBackboneError(f"quantization must be one of {list(QUANTIZATIONS)}, got {kind!r}.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingExtraError(
            f"a {kind} base (QLoRA) needs bitsandbytes, which is not installed: `pip install bitsandbytes` "
            "(it needs a CUDA GPU or another backend it supports)."
        )
    import torch
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)
