"""Adapter kinds: LoRA through peft, learnable prompts (CoOp text context + VPT visual tokens), and
linear heads over image features started from the label prompts' text prior.

Each kind registers itself (see :mod:`.registry`); importing this package registers the built-in ones.
"""

from .lora import LoraBank, default_lora_config
from .lora_kind import LORA, MergeSpec
from .prompt import PromptAdapter, PromptConfig, PromptHooks
from .prompt_kind import PROMPT
from .head import HeadAdapter, HeadConfig
from .head_kind import HEAD
from .registry import AdapterKind, AdapterSet, adapter_kind, adapter_kinds, kind_for_spec, register_adapter_kind

__all__ = [
    "HEAD",
    "HeadAdapter",
    "HeadConfig",
    "LORA",
    "PROMPT",
    "AdapterKind",
    "AdapterSet",
    "LoraBank",
    "MergeSpec",
    "PromptAdapter",
    "PromptConfig",
    "PromptHooks",
    "adapter_kind",
    "adapter_kinds",
    "default_lora_config",
    "kind_for_spec",
    "register_adapter_kind",
]
