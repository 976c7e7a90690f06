"""The same model, built the same way at the server and at every site: base, domains and adapters.

Adapters are initialised from ``run.seed`` in plan order, so every party starts from identical
tensors (FFA-LoRA relies on it: its frozen A matrices never travel and must agree everywhere).
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import ConfigError
from ..model import ContinualVLM
from ..training.config import RunConfig
from ..training.paradigms import Plan, make_plan
from ..training.trainer import build_base


def build_federated_model(run: RunConfig) -> tuple[ContinualVLM, Plan]:
    """The base named by ``run.model`` with every domain and adapter of ``run.paradigm``'s plan."""
    from accelerate.utils import set_seed

    missing = [d.name for d in run.domains if not d.labels and d.task == "classification"]
    if missing:
        raise ConfigError(f"a federated run needs `labels` declared for every domain (the server holds no data to read them from); missing for {missing}.")
    model = build_base(run)
    set_seed(run.seed)
    plan = make_plan(run.paradigm, [d.name for d in run.domains], run.rehearsal.size > 0)
    targets = model.family.default_lora_targets(model.base_model)
    own = {n for n, kind in plan.adapters if kind == "domain"}
    for d in run.domains:
        model.add_domain(d.name, d.labels or [], d.prompt, adapter=run.adapter.build(targets) if d.name in own else "none", seed=run.seed, task=d.task)
    for name, kind in plan.adapters:
        if kind == "shared":
            model.add_shared_adapter(name, adapter=(run.shared_adapter or run.adapter).build(targets), seed=run.seed)
    return model, plan


def base_fingerprint(model: ContinualVLM) -> str:
    """One string for the frozen base: its config and a sample of its weights (see :class:`~medadapt.backbones.Backbone`)."""
    prints = model.backbone.fingerprints
    return hashlib.sha256(f"{prints.get('config')}:{prints.get('weights')}".encode()).hexdigest()[:32]


def frozen_digest(model: ContinualVLM, names: list[str]) -> str:
    """sha256 of the LoRA A tensors of adapters ``names`` (what FFA-LoRA keeps frozen and never sends)."""
    digest = hashlib.sha256()
    for name in names:
        for key, tensor in sorted(model.adapter_state_dict(name).items()):
            if ".lora_A." in key:
                digest.update(key.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def trainable_adapters(plan: Plan) -> list[str]:
    """Every adapter the plan trains, in plan order."""
    return [name for name, _ in plan.adapters]


def stage_adapters(plan: Plan, stage_index: int) -> list[str]:
    """The adapters stage ``stage_index`` trains (one per phase, in phase order)."""
    return list(dict.fromkeys(p.adapter for p in plan.stages[stage_index].phases))


def describe(model: Any) -> str:
    """Short text naming the model's base (for logs)."""
    return f"{model.backbone.source or 'in-memory base'}"
