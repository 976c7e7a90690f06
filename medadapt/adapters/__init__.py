"""Adapter kinds: LoRA through peft, and learnable prompts (CoOp text context + VPT visual tokens)."""

from .lora import LoraBank, default_lora_config
from .prompt import PromptAdapter, PromptConfig, PromptHooks

__all__ = ["LoraBank", "PromptAdapter", "PromptConfig", "PromptHooks", "default_lora_config"]
