"""Run configuration: YAML + ``key=value`` overrides, validated before anything is built.

Every section is a dataclass; unknown keys are an error that lists the valid ones, so a typo in a
config never silently trains the wrong thing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
import types
from typing import Any, Union, get_origin, get_type_hints

import yaml

from ..errors import ConfigError
from ..tiny import tiny_names

PARADIGMS = ("specialized", "joint", "continual", "rehearsal")
BUILTIN_MODELS = tuple(tiny_names())  # the built-in tiny bases (one list: medadapt.tiny.tiny_names)
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


@dataclass
class AdapterSettings:
    """Adapter built for each domain or shared adapter: ``type`` lora, prompt or head plus its options."""

    type: str = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str | None = None  # module names, or one regex matched against full module paths
    n_ctx: int = 4
    ctx_init: str = "template"
    n_visual_tokens: int = 0
    head_init: str = "auto"  # head adapters: "auto", "class_mean", "text" or "zero" (see medadapt.adapters.head)

    def __post_init__(self) -> None:
        from ..adapters import adapter_kinds
        from ..adapters.head import HEAD_INITS

        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"adapter.head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}.")

        if self.type not in adapter_kinds():
            raise ConfigError(f"adapter.type must be {' or '.join(repr(k) for k in adapter_kinds())}, got {self.type!r}.")
        if self.r < 1:
            raise ConfigError(f"adapter.r must be >= 1, got {self.r}.")
        if not self.alpha > 0:
            raise ConfigError(f"adapter.alpha must be > 0 (LoRA scales its update by alpha / r; 0 trains nothing), got {self.alpha}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"adapter.dropout must be in [0, 1), got {self.dropout}.")
        if self.n_ctx < 1 or self.n_visual_tokens < 0:
            raise ConfigError(f"adapter.n_ctx must be >= 1 and adapter.n_visual_tokens >= 0, got {self.n_ctx} and {self.n_visual_tokens}.")

    def build(self, default_targets: list[str] | str) -> Any:
        """The adapter config these settings describe (built by the adapter kind named ``type``)."""
        from ..adapters import adapter_kind

        return adapter_kind(self.type).config_from_settings(self, default_targets)


@dataclass
class RehearsalSettings:
    """Rehearsal memory: ``size`` references, selection ``policy``, replayed ``ratio`` of each batch."""

    size: int = 200
    policy: str = "class_balanced"
    ratio: float = 0.5

    def __post_init__(self) -> None:
        from ..rehearsal import available_policies

        if self.size < 0:
            raise ConfigError(f"rehearsal.size must be >= 0, got {self.size}.")
        if self.policy not in available_policies():
            raise ConfigError(f"rehearsal.policy {self.policy!r} unknown; valid: {available_policies()}.")
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"rehearsal.ratio must be in [0, 1), got {self.ratio}.")


CACHE_KEYS = ("image_cache_mb", "image_cache_spill_mb")  # train settings left out of the run's fingerprint


@dataclass
class TrainSettings:
    """Optimisation settings shared by every stage."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_accum_steps: int | None = None  # None: what `accelerate launch`/config gives (else 1)
    mixed_precision: str | None = None  # None: what `accelerate launch`/config gives (else "no")
    eval_batch_size: int = 128
    checkpoint_every: int = 50
    max_steps_per_stage: int | None = None
    gradient_checkpointing: bool = False  # recompute the base's activations in backward (transformers mechanism)
    dataloader_workers: int = 0  # >0: a torch DataLoader with this many worker processes assembles the batches
    image_cache_mb: int = 1024  # generative bases: projected image tokens kept in memory for LM-only stages (0: off)
    image_cache_spill_mb: int = 0  # then spilled to a memory-mapped file in output_dir, up to this size (0: no spill)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}.")
        if self.grad_accum_steps is not None and self.grad_accum_steps < 1:
            raise ConfigError(f"train.grad_accum_steps must be >= 1 (or left empty for accelerate's setting), got {self.grad_accum_steps}.")
        if self.image_cache_mb < 0 or self.image_cache_spill_mb < 0:
            raise ConfigError(f"train.image_cache_mb and train.image_cache_spill_mb must be >= 0, got {self.image_cache_mb} and {self.image_cache_spill_mb}.")
        if self.dataloader_workers < 0:
            raise ConfigError(f"train.dataloader_workers must be >= 0, got {self.dataloader_workers}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr must be > 0 and finite, got {self.lr}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"train.weight_decay must be >= 0 and finite, got {self.weight_decay}.")
        if self.max_steps_per_stage is not None and self.max_steps_per_stage < 1:
            raise ConfigError(f"train.max_steps_per_stage must be >= 1 (or left empty for no limit), got {self.max_steps_per_stage}.")
        if self.mixed_precision is not None and self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"train.mixed_precision must be no, fp16, bf16 or empty (accelerate's setting), got {self.mixed_precision!r}.")


@dataclass
class DomainSettings:
    """One domain: name, labels, prompt template and where its data is (a ``DataConfig`` mapping)."""

    name: str
    data: dict[str, Any]
    labels: list[str] | None = None
    prompt: str = "{}"
    task: str = "classification"

    def __post_init__(self) -> None:
        from ..data import DataConfig
        from ..domains import validate_labels, validate_name
        from ..errors import DomainError

        if not self.name or not isinstance(self.name, str):
            raise ConfigError(f"domain name must be a non-empty string, got {self.name!r}.")
        try:
            validate_name(self.name)
            if self.labels is not None:
                self.labels = validate_labels(self.name, self.labels)
        except DomainError as exc:
            raise ConfigError(f"domains: {exc}") from exc
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise ConfigError(f"domain {self.name!r}: prompt must contain one '{{}}' where the label goes, got {self.prompt!r}.")
        from ..domains import TASKS

        if self.task not in TASKS:
            raise ConfigError(f"domain {self.name!r}: task must be one of {list(TASKS)}, got {self.task!r}.")
        from ..data import DataError

        try:
            DataConfig.from_dict(self.data)  # unknown data keys / formats fail here, at config time
        except DataError as exc:
            raise ConfigError(f"domain {self.name!r} data: {exc}") from exc


@dataclass
class TrackingSettings:
    """Optional experiment tracking through accelerate (``log_with``: tensorboard, wandb, ...)."""

    log_with: str | None = None
    project: str = "medadapt"

    def __post_init__(self) -> None:
        from accelerate.utils import LoggerType

        valid = list(dict.fromkeys(["all", *(t.value for t in LoggerType)]))
        if self.log_with is not None and self.log_with not in valid:
            raise ConfigError(f"tracking.log_with {self.log_with!r} unknown; valid: {valid} (or leave it empty).")


@dataclass
class RunConfig:
    """Everything a training run needs. ``model`` is a Hub id, a local folder, or a built-in tiny base
    (``tiny-clip``, ``tiny-siglip``, ``tiny-llava``, ``tiny-gemma3``, ``tiny-paligemma``, ``tiny-idefics3``)."""

    model: str = "tiny-clip"
    paradigm: str = "rehearsal"
    domains: list[DomainSettings] = field(default_factory=list)
    adapter: AdapterSettings = field(default_factory=AdapterSettings)
    shared_adapter: AdapterSettings | None = None
    rehearsal: RehearsalSettings = field(default_factory=RehearsalSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    seed: int = 0
    output_dir: str = "runs/demo"
    compare_naive: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    quantization: str | None = None  # "4bit" / "8bit": a bitsandbytes-quantized frozen base (QLoRA)

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}.")
        if self.paradigm not in PARADIGMS:
            raise ConfigError(f"paradigm {self.paradigm!r} unknown; valid: {list(PARADIGMS)}.")
        if not self.domains:
            raise ConfigError("config lists no domains; add at least one under `domains:`.")
        if self.quantization is not None and self.quantization not in ("4bit", "8bit"):
            raise ConfigError(f"quantization must be 4bit, 8bit or empty, got {self.quantization!r}.")
        names = [d.name for d in self.domains]
        if len(set(names)) != len(names):
            raise ConfigError(f"domain names must be unique, got {names}.")
        self._check_shared_kind()

    def _check_shared_kind(self) -> None:
        """A kind tied to one domain's labels (a head) cannot be the shared adapter of a paradigm that has one."""
        from ..adapters import adapter_kind

        shared = self.shared_adapter or self.adapter
        if self.paradigm != "specialized" and not adapter_kind(shared.type).serves_shared:
            where = "shared_adapter.type" if self.shared_adapter is not None else "adapter.type (no shared_adapter given)"
            raise ConfigError(
                f"paradigm {self.paradigm!r} trains a shared adapter, but {where} is {shared.type!r}, which serves one "
                "domain's labels only; set `shared_adapter: {type: lora}` (or another kind that serves every domain)."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not output_dir), to recognise the same run."""
        data = self.to_dict()
        data.pop("output_dir", None)
        data.pop("tracking", None)
        for key in CACHE_KEYS:  # how much is cached changes speed, never results
            data.get("train", {}).pop(key, None)
        adapter = data.get("adapter", {})
        if adapter.get("type") != "head":  # only head adapters read it: runs from before it existed still resume
            adapter.pop("head_init", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_not_found(model: str, exc: BaseException) -> ConfigError:
    """The error for a ``model`` that is no built-in name, no loadable folder and could not be had from the Hub."""
    import difflib
    import os

    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if os.path.isdir(model):
        return ConfigError(f"model {model!r} is a local folder but could not be loaded as a supported base model: {reason}")
    close = difflib.get_close_matches(model, BUILTIN_MODELS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(
        f"model {model!r} is neither a built-in name {list(BUILTIN_MODELS)} nor a local folder, and the Hugging Face "
        f"Hub could not provide it ({reason}).{hint} Check the spelling, the path, or your network / HF_HUB_OFFLINE."
    )


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass ``cls`` from a mapping, recursing into nested dataclasses."""
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}: {data!r}.")
    hints = get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; valid keys at this level: {valid}.")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        kwargs[key] = _convert(hint, value, f"{where}{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _convert(hint: Any, value: Any, where: str) -> Any:
    if hint == list[DomainSettings]:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of domains, got {type(value).__name__}.")
        return [_build(DomainSettings, v, f"{where}[{i}].") for i, v in enumerate(value)]
    nested = {AdapterSettings, RehearsalSettings, TrainSettings, TrackingSettings, DomainSettings}
    args = getattr(hint, "__args__", ())
    for cls in nested:
        if hint is cls or cls in args:
            if value is None and type(None) in args:
                return None
            return _build(cls, value, f"{where}.")
    is_union = get_origin(hint) in (Union, types.UnionType)
    base = next((a for a in args if a is not type(None)), hint) if is_union else hint
    if is_union and str in args and isinstance(value, str):
        return value  # e.g. adapter.target_modules: a regex instead of a list of names
    if value is None:
        return None
    origin = getattr(base, "__origin__", None)
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ConfigError(f"{where} must be a {origin.__name__}, got {type(value).__name__} {value!r}.")
        return value
    if base is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if base in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where} must be {base.__name__}, got bool {value!r}.")
    if base in (int, float) and isinstance(value, (int, float)):
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return base(value)
    if where == "train.mixed_precision" and value is False:
        return "no"  # YAML 1.1 reads `mixed_precision: no` as false
    if base in (int, float, str, bool) and not isinstance(value, base):
        raise ConfigError(f"{where} must be {base.__name__}, got {type(value).__name__} {value!r}.")
    return value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.epochs=2", "rehearsal.size=50"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=2).")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out


def _list_index(items: list[Any], key: str) -> int | None:
    """Position of ``key`` in a list: an integer index, or the ``name`` of a mapping in it."""
    if key.lstrip("-").isdigit() and -len(items) <= int(key) < len(items):
        return int(key) % len(items)
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    return names.index(key) if key in names else None


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into ``base``; in lists, ``domains.0.x`` or ``domains.<name>.x`` picks one item."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = merge_config(current, value)
        elif isinstance(value, dict) and isinstance(current, list) and value and all(isinstance(k, str) for k in value):
            items = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in current]
            for sub, subvalue in value.items():
                index = _list_index(items, sub)
                if index is None:
                    names = [i.get("name") for i in items if isinstance(i, dict)]
                    raise ConfigError(f"override {key}.{sub}: no item {sub!r} in {key}; use an index 0..{len(items) - 1} or a name {names}.")
                if isinstance(subvalue, dict) and isinstance(items[index], dict):
                    items[index] = merge_config(items[index], subvalue)
                else:
                    items[index] = subvalue
            merged[key] = items
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML run config holds; :class:`ConfigError` when missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level.")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, defaults: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (or ``defaults``), apply overrides, validate, and return a :class:`RunConfig`."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        data = merge_config(data, read_config_file(path))
    data = merge_config(data, parse_overrides(overrides or []))
    return _build(RunConfig, data, "")
