"""A run config written out in full with every key explained (``medadapt config show|init``).

:data:`KEY_HELP` holds one line of help per config key (``train.lr``, ``domains.data.path``, ...);
tests/test_cli_train.py checks that every field of :class:`~medadapt.training.config.RunConfig`, its
sections and :class:`~medadapt.data.DataConfig` has one, so a new key cannot ship undocumented.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import yaml

from .config import load_config

__all__ = ["KEY_HELP", "commented_config"]

KEY_HELP: dict[str, str] = {
    "model": "base model: a Hub id, a local folder, or a built-in tiny base (tiny-clip, tiny-siglip, tiny-llava, "
             "tiny-gemma3, tiny-paligemma, tiny-idefics3; random weights built from config, no network)",
    "paradigm": "specialized (one adapter per domain), joint (one adapter on all domains at once), "
                "continual (domains one after another), rehearsal (continual + a shared adapter tuned with replay)",
    "compare_naive": "also run the same domains naively (continual, no rehearsal) and print both accuracy matrices",
    "seed": "seed of everything random in the run (adapter init, shuffling, rehearsal selection), in [0, 2**32)",
    "output_dir": "where the run writes its model save, results.json, report.md and checkpoints/",
    "revision": "Hub revision (branch, tag or commit) of the base model; empty = the default branch",
    "trust_remote_code": "allow the base model's own Python code from the Hub (transformers trust_remote_code)",
    "quantization": "load the frozen base in 4bit or 8bit (bitsandbytes, QLoRA); empty = full precision",
    "adapter": "the adapter trained for each domain",
    "adapter.type": "lora (peft LoRA on target_modules), prompt (CoOp context vectors + optional VPT tokens) "
                    "or head (a linear head over the frozen image features; dual encoders)",
    "adapter.r": "LoRA rank",
    "adapter.alpha": "LoRA alpha (the update is scaled by alpha / r)",
    "adapter.dropout": "LoRA dropout in [0, 1)",
    "adapter.target_modules": "LoRA target module names, or one regex over full module paths; empty = the family's default",
    "adapter.n_ctx": "prompt adapter: number of learned text context vectors",
    "adapter.ctx_init": "prompt adapter: 'template' (start from the prompt's words), 'random', or literal text",
    "adapter.n_visual_tokens": "prompt adapter: number of learned visual prompt tokens (VPT); 0 = none",
    "adapter.head_init": "head adapter: how it starts from the training data: auto, class_mean, text or zero",
    "shared_adapter": "the shared adapter of the rehearsal paradigm (same keys as adapter); empty = the same settings as adapter",
    "rehearsal": "the replay memory of earlier domains",
    "rehearsal.size": "number of earlier samples kept in memory (0 = no rehearsal)",
    "rehearsal.policy": "how the memory is chosen: class_balanced, reservoir, ...",
    "rehearsal.ratio": "fraction of each batch replayed from memory, in [0, 1)",
    "train": "optimisation settings shared by every stage",
    "train.epochs": "epochs per stage",
    "train.batch_size": "batch size per process",
    "train.lr": "learning rate (AdamW)",
    "train.weight_decay": "AdamW weight decay",
    "train.grad_accum_steps": "gradient accumulation steps; empty = what `accelerate launch`/config gives (else 1)",
    "train.mixed_precision": "no, fp16 or bf16; empty = what `accelerate launch`/config gives (else no)",
    "train.eval_batch_size": "batch size when evaluating",
    "train.checkpoint_every": "write a checkpoint every this many optimiser steps (for --resume)",
    "train.max_steps_per_stage": "stop each stage after this many steps; empty = no limit",
    "train.gradient_checkpointing": "recompute the base's activations in backward to save memory",
    "train.dataloader_workers": "worker processes assembling batches; 0 = in the training process",
    "train.image_cache_mb": "generative bases: MB of projected image tokens kept in memory for stages that train "
                            "only the language model (reused from the second epoch on); 0 = off",
    "train.image_cache_spill_mb": "then spilled to a memory-mapped file in output_dir, up to this many MB; 0 = no spill",
    "tracking": "experiment tracking through accelerate",
    "tracking.log_with": "tensorboard, wandb, ... (any accelerate tracker); empty = no tracking",
    "tracking.project": "project name given to the tracker",
    "domains": "the domains (or tasks), learned in this order",
    "domains.name": "domain name (letters, digits, - and _): its adapter's name",
    "domains.labels": "class names (classification); empty for a vqa task",
    "domains.prompt": "prompt template; '{}' is where the label (or the question) goes",
    "domains.task": "classification or vqa (free-text answers; generative bases only)",
    "domains.data": "where the domain's data is",
    "domains.data.format": "npz, imagefolder, hf, vqa, vqa_rad, vqa_rad_organ, synthetic, dicom, ...",
    "domains.data.path": "file or folder; medadapt:... points inside the installed package",
    "domains.data.dataset": "Hugging Face Hub dataset name (hf / vqa formats, instead of path)",
    "domains.data.splits": "medadapt split name -> source split name",
    "domains.data.columns": "column names of the source (image, label; question, answer, split for vqa)",
    "domains.data.max_samples": "optional cap per split (a seeded random subsample, in original order)",
    "domains.data.seed": "seed for subsampling and generated splits or synthetic data",
    "domains.data.synthetic": "synthetic format: kind, n_train, n_test, n_val, size",
    "domains.data.options": "format-specific options (e.g. test_fraction, answer_type)",
}


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _help(path: str) -> str | None:
    """The help line of a key path; ``shared_adapter.*`` keys share ``adapter.*``'s."""
    if path.startswith("shared_adapter."):
        path = "adapter." + path[len("shared_adapter."):]
    return KEY_HELP.get(path)


def _comment(lines: list[str], key: str, pad: str) -> None:
    for line in textwrap.wrap(_help(key) or "", width=96 - len(pad)):
        lines.append(f"{pad}# {line}")


def _mapping(lines: list[str], data: dict[str, Any], prefix: str, pad: str, first: str | None = None) -> None:
    for i, (key, value) in enumerate(data.items()):
        path = f"{prefix}{key}"
        lead = first if (first is not None and i == 0) else pad
        if _help(path):
            _comment(lines, path, lead[:-2] if first is not None and i == 0 else pad)
        nested = isinstance(value, dict) and value and all(_help(f"{path}.{k}") for k in value)
        if nested:
            lines.append(f"{lead}{key}:")
            _mapping(lines, value, f"{path}.", pad + "  ")
        elif path == "domains":
            lines.append(f"{lead}{key}:")
            for domain in value:
                _mapping(lines, domain, "domains.", pad + "  ", first=pad + "- ")
        else:
            lines.append(f"{lead}{key}: {_scalar(value)}")


def commented_config(path: str | Path) -> str:
    """The config at ``path`` resolved in full (every default filled in), as YAML with a comment above each key.

    Reading the text back with :func:`~medadapt.training.config.load_config` gives the same run config."""
    config = load_config(path)
    data = config.to_dict()
    for domain in data["domains"]:  # the data mapping as written (its defaults depend on the format)
        domain["data"] = dict(domain["data"])
    lines = [f"# medadapt run config (from {Path(path).name}): every key with its value; "
             "edit and run `medadapt train --config THIS_FILE`.",
             "# Any key can also be overridden on the command line: key=value (e.g. train.epochs=2 domains.0.data.path=...)."]
    _mapping(lines, data, "", "")
    return "\n".join(lines) + "\n"
