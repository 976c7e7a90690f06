"""vLLM export: each generative stage of a save as a standalone peft folder vLLM's multi-LoRA serving loads.

vLLM serves many LoRAs on one base (``vllm serve BASE --enable-lora --lora-modules name=path ...``,
or ``LoRARequest`` in Python). A medadapt save keeps its stages as sub-folders beside a manifest;
:func:`export_vllm` writes one folder per stage, ``OUT/<stage>/adapter_config.json`` +
``adapter_model.safetensors`` (``base_model_name_or_path`` set to the base the save records), and
returns the exact ``vllm serve`` command.

What vLLM cannot serve is refused before anything is written, with the reason (the rules are
vLLM's own: ``PEFTHelper._validate_features`` / ``validate_legal`` in ``vllm/lora/peft_helper.py``,
and ``_filter_unsupported_mm_module`` in ``vllm/lora/models.py``; ``tests/test_export_vllm.py``
links the source lines):

* DoRA (``use_dora``), ``modules_to_save``, a bias (``bias`` or ``lora_bias``);
* a rank above ``max_lora_rank`` (vLLM's ``--max-lora-rank``, default 16);
* per-module ranks or alphas (``rank_pattern``/``alpha_pattern``: vLLM reads one ``r`` and ``lora_alpha``);
* LoRA tensors outside the language model (image tower, projector): vLLM skips them without an
  error, so the served adapter would silently differ. ``drop_non_language=True`` drops them instead,
  and the export lists what was dropped;
* prompt adapters and dual-encoder saves (vLLM serves generative models; use
  :meth:`ContinualVLM.export_merged <medadapt.ContinualVLM.export_merged>` for a plain checkpoint).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import load_file, save_file

from .._io import atomic_directory, sha256_file, storage_errors
from ..errors import AdapterError, StageFileError
from ..families.base import family_by_name
from ..families.generative import GENERATIVE
from ..saves.manifest import read_manifest
from ..saves.transaction import read_snapshot

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
STATE_PREFIX = "base_model.model."
COMMAND_FILE = "vllm_serve.txt"


@dataclass
class VllmExport:
    """What :func:`export_vllm` wrote: one folder per stage, the base to serve them on, what was dropped."""

    out: Path
    base: str
    revision: str | None
    stages: dict[str, Path]
    max_lora_rank: int
    dropped: dict[str, list[str]] = field(default_factory=dict)  # stage -> module paths whose LoRA was dropped

    def command(self) -> str:
        """The ``vllm serve`` command serving every exported stage on the recorded base."""
        parts = ["vllm", "serve", shlex.quote(self.base)]
        if self.revision:
            parts += ["--revision", shlex.quote(self.revision)]
        parts += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(max(1, len(self.stages)))]
        parts += ["--lora-modules", *(shlex.quote(f"{name}={path}") for name, path in self.stages.items())]
        return " ".join(parts)


def stage_problems(name: str, config: dict[str, Any], keys: Sequence[str], language_model: str, max_lora_rank: int) -> tuple[list[str], list[str]]:
    """Why vLLM cannot serve stage ``name`` as it is, and the module paths of its LoRA tensors outside the
    language model (module path prefix ``language_model``), which vLLM would skip."""
    problems = []
    if str(config.get("peft_type", "")).upper() != "LORA":
        problems.append(f"it is not a LoRA (peft_type {config.get('peft_type')!r}); vLLM serves LoRA adapters only")
    if config.get("use_dora"):
        problems.append("it uses DoRA (use_dora), which vLLM does not support; train it as a plain LoRA")
    if config.get("modules_to_save"):
        problems.append(f"it has modules_to_save {config['modules_to_save']}, which vLLM refuses")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("it trains biases (bias / lora_bias), which vLLM refuses unless bias support is enabled; train without")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        problems.append(f"its rank r={rank!r} is not a positive integer")
    elif rank > max_lora_rank:
        problems.append(f"its rank r={rank} is above --max-lora-rank {max_lora_rank}; pass a larger --max-lora-rank (one of {VLLM_MAX_LORA_RANKS})")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("it sets per-module ranks or alphas (rank_pattern / alpha_pattern); vLLM reads one r and lora_alpha")
    outside = sorted({
        key[len(STATE_PREFIX):].rsplit(".lora_", 1)[0]
        for key in keys
        if not key[len(STATE_PREFIX):].startswith(language_model + ".")
    })
    return [f"stage {name!r}: {p}" for p in problems], outside


def _read_stage(root: Path, name: str, entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if entry.get("type") != "lora":
        raise AdapterError(f"stage {name!r} is a {entry.get('type')} adapter; vLLM serves LoRA adapters only (leave it out with --stages).")
    folder = root / entry["path"]
    for filename, expected in entry.get("files", {}).items():
        if sha256_file(folder / filename) != expected:
            raise StageFileError(f"stage {name!r}: {filename} does not match the manifest's sha256; the save was modified, nothing was exported.")
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    return config, load_file(str(folder / "adapter_model.safetensors"))


def export_vllm(
    save: str | os.PathLike,
    out: str | os.PathLike,
    stages: Sequence[str] | None = None,
    max_lora_rank: int = 16,
    drop_non_language: bool = False,
) -> VllmExport:
    """Write the generative stages of save folder ``save`` (all, or ``stages``) as vLLM LoRA folders in ``out``.

    Refuses what vLLM cannot serve (see the module docstring) before writing anything; the folder is
    written atomically. Returns a :class:`VllmExport` whose :meth:`~VllmExport.command` is the
    ``vllm serve`` command line (also written to ``out/vllm_serve.txt``).
    """
    if max_lora_rank not in VLLM_MAX_LORA_RANKS:
        raise AdapterError(f"--max-lora-rank {max_lora_rank} is not a value vLLM accepts; use one of {VLLM_MAX_LORA_RANKS}.")
    root = Path(save)
    with read_snapshot(root):
        manifest = read_manifest(root)
        base = manifest["base"]
        family = family_by_name(base["family"])
        if family.kind != "generative":
            raise AdapterError(
                f"{root} holds a {base['family']!r} (dual-encoder) save: vLLM serves generative (image-text-to-text) models, "
                "not dual encoders. For a standalone checkpoint of one domain use model.export_merged(domain, OUT) "
                "(ContinualVLM.export_merged), which any transformers server loads."
            )
        language_model = GENERATIVE.spec(base["model_type"]).language_model
        adapters = manifest["adapters"]
        chosen = list(stages) if stages else list(adapters)
        unknown = [s for s in chosen if s not in adapters]
        if unknown:
            raise AdapterError(f"unknown stage(s) {unknown}; the save holds {list(adapters)}.")
        problems: list[str] = []
        read: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        dropped: dict[str, list[str]] = {}
        for name in chosen:
            config, tensors = _read_stage(root, name, adapters[name])
            found, outside = stage_problems(name, config, list(tensors), language_model, max_lora_rank)
            problems += found
            if outside and not drop_non_language:
                problems.append(
                    f"stage {name!r}: LoRA on {len(outside)} module(s) outside the language model ({language_model}), e.g. "
                    f"{outside[0]!r} (image tower or projector); vLLM applies LoRA to the language model only and would skip "
                    "them silently. Export with --drop-non-language to drop them (the served adapter then differs from "
                    "medadapt's), or train the stage on the language model only (the default targets)."
                )
            if outside and drop_non_language:
                dropped[name] = outside
                tensors = {k: v for k, v in tensors.items() if k[len(STATE_PREFIX):].startswith(language_model + ".")}
            read[name] = (config, tensors)
        if problems:
            raise AdapterError("vLLM cannot serve this export as it is; nothing was written:\n  - " + "\n  - ".join(problems))
    if base.get("saved_in"):
        served_base, revision = str((root / base["saved_in"]).resolve()), None
    else:
        served_base, revision = str(base.get("source")), base.get("revision")
    target = Path(out)
    result = VllmExport(target, served_base, revision, {n: (target / n).resolve() for n in chosen}, max_lora_rank, dropped)
    with storage_errors(f"cannot write the vLLM export into {out}"), atomic_directory(target) as tmp:
        for name, (config, tensors) in read.items():
            folder = tmp / name
            folder.mkdir()
            config = {**config, "base_model_name_or_path": served_base, "revision": revision}
            (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / COMMAND_FILE).write_text(result.command() + "\n", encoding="utf-8")
    return result
