"""Save a model's parts as composable stage folders, and read saves (whole or one stage at a time).

A service over explicit parts (:class:`ModelParts`: base, adapters, stage table, extras): it never
imports or changes the model. :meth:`medadapt.ContinualVLM.from_pretrained` / ``load_adapter`` add
the stages :func:`load_save` / :func:`read_stage` return.

Layout of a save::

    manifest.json                 base, domains in order, adapters, sha256 of every file
    <adapter>/adapter_config.json + adapter_model.safetensors      (LoRA: standard peft folder)
    <adapter>/prompt_config.json  + prompt_model.safetensors       (prompt adapter)
    base/...                      (only when the base cannot be reloaded from a Hub id or folder)

Saves are transactions (:mod:`medadapt.saves.transaction`): new folders are staged, a journal records
the swap, and the new manifest is the commit point, so a failed or killed save leaves the folder
loading as the complete previous save or the complete new one; the writer holds the folder's lock
(:mod:`medadapt.locking`) and readers load a consistent snapshot. Unchanged adapter folders are
left untouched (byte-identical).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from ..version import __version__
from .._io import read_json_file, storage_errors
from ..adapters import AdapterKind, AdapterSet, adapter_kind
from ..backbones import Backbone, backbone_from_model, load_backbone, save_backbone
from ..base_files import quiet_weight_loading
from ..domains import Domain
from ..errors import AdapterError, BaseMismatchError, StageFileError
from ..families import family_by_name
from ..stages import StageTable
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, check_manifest_sha256, hash_folder, read_manifest, verify_files
from .schema import check_domain_task
from .transaction import SaveTransaction, read_snapshot
from .weights_digest import base_weights_sha256, check_base_weights

BASE_FOLDER = "base"


@dataclass
class ModelParts:
    """What a save is made of: the frozen base, its adapters, the stage table and the JSON-able extras.

    ``anonymous_base``: the manifest and adapter configs name no base source (a base loaded from a
    local folder is published as ``base/`` without its local path)."""

    backbone: Backbone
    adapters: AdapterSet
    stages: StageTable
    extras: dict[str, Any] = field(default_factory=dict)
    anonymous_base: bool = False

    @property
    def source(self) -> tuple[str | None, str | None]:
        """The base's ``(source, revision)`` as the save records them."""
        return (None, None) if self.anonymous_base else (self.backbone.source, self.backbone.revision)


@dataclass
class SavedStage:
    """One stage read from a save, ready to be added to a model (``config`` None: a domain without adapter)."""

    name: str
    domain: Domain | None
    config: Any
    weights: dict[str, torch.Tensor] | None
    provenance: dict[str, Any] | None


@dataclass
class LoadedSave:
    """A whole save: its base, its stages in order, and the extras."""

    backbone: Backbone
    stages: list[SavedStage]
    extras: dict[str, Any]


# -- saving ----------------------------------------------------------------------------------------
def _write_adapter(parts: ModelParts, name: str, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    kind = parts.adapters.kind_of(name)
    kind.write_config(parts.adapters, name, folder, *parts.source)
    state = {k: v.detach().cpu().contiguous() for k, v in kind.state_dict(parts.adapters, name).items()}
    save_file(state, str(folder / kind.files[1]), metadata={"format": "pt"})
    return hash_folder(folder, kind.files)


def build_manifest(parts: ModelParts, adapters: dict[str, dict[str, Any]], base_files: dict[str, str] | None) -> dict[str, Any]:
    """The manifest dict for ``parts`` given each adapter's files entry."""
    backbone = parts.backbone
    source, revision = parts.source
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medadapt_version": __version__,
        "base": {
            "source": source,
            "revision": revision,
            "family": backbone.family.name,
            "model_type": backbone.model_type,
            "config_fingerprint": backbone.fingerprints["config"],
            "weights_fingerprint": backbone.fingerprints["weights"],
            "saved_in": BASE_FOLDER if base_files else None,
            "files": base_files or {},
            **backbone.family.manifest_fields(backbone),
        },
        **parts.stages.to_manifest(),
        "adapters": adapters,
        "extras": parts.extras,
    }


def base_needs_saving(backbone: Backbone) -> bool:
    """Whether the base cannot be reloaded from its source (built in memory, or a built-in tiny model)."""
    source = backbone.source
    return source is None or source.startswith("medadapt/tiny-")


def save_model(parts: ModelParts, save_directory: str | os.PathLike, save_base: bool | None = None) -> dict[str, Any]:
    """Write the stages of ``parts`` (see :meth:`medadapt.ContinualVLM.parts`) into ``save_directory`` as one
    transaction (see :mod:`medadapt.saves.transaction`); returns the manifest."""
    target = Path(save_directory)
    with storage_errors(f"cannot save to {target}"):
        target.mkdir(parents=True, exist_ok=True)
        with SaveTransaction(target) as tx:
            return _stage_and_commit(parts, target, tx, save_base)


def _stage_and_commit(parts: ModelParts, target: Path, tx: SaveTransaction, save_base: bool | None) -> dict[str, Any]:
    staging = tx.staging
    entries: dict[str, dict[str, Any]] = {}
    provenance = parts.stages.provenance
    for name in parts.stages.names():
        files = _write_adapter(parts, name, staging / name)
        entry = {"type": parts.stages.kind(name), "path": name, "files": files}
        if name in provenance:
            entry["source"] = provenance[name]
        entries[name] = entry
    base_files: dict[str, str] | None = None
    if save_base if save_base is not None else base_needs_saving(parts.backbone):
        save_backbone(parts.backbone, str(staging / BASE_FOLDER))
        names = sorted(p.name for p in (staging / BASE_FOLDER).iterdir() if p.is_file())
        base_files = hash_folder(staging / BASE_FOLDER, names)
    manifest = build_manifest(parts, entries, base_files)
    if base_files:  # medadapt wrote the base: record a hash over all its tensors (the fingerprint samples a few)
        manifest["base"]["weights_sha256"] = base_weights_sha256(parts.backbone)
    try:  # serialise before touching the target, so a bad manifest (e.g. extras) keeps the old save
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise StageFileError(
            f"cannot save to {target}: the manifest is not JSON-serialisable (check model.extras and domain "
            f"metadata): {exc}"
        ) from exc
    old = _old_manifest(target)
    folders = {e["path"]: e["files"] for e in entries.values()}
    if base_files:
        folders[BASE_FOLDER] = base_files
    stale = []
    for name in set(old.get("adapters", {})) - set(entries):
        relative = old["adapters"][name].get("path", "")
        plain = isinstance(relative, str) and relative not in ("", ".", "..") and not any(c in relative for c in "/\\:")
        if plain and relative not in folders and (target / relative).is_dir():
            stale.append(relative)
    tx.commit(manifest_bytes, folders, stale)
    return manifest


def _old_manifest(target: Path) -> dict[str, Any]:
    try:
        old = read_json_file(target / MANIFEST_NAME)
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and isinstance(old.get("adapters"), dict) else {}


# -- loading ---------------------------------------------------------------------------------------
Locate = Callable[..., "tuple[Path, dict[str, Any]]"]  # (path, revision=..., **options) -> (folder, provenance)


def local_only(path: str | os.PathLike, revision: str | None = None, **options: Any) -> tuple[Path, dict[str, Any]]:
    """The default :data:`Locate`: ``path`` must be a local folder (the Hub client,
    :func:`medadapt.hub.pull.locate_save`, also downloads repo ids)."""
    if not os.path.isdir(path):
        raise StageFileError(f"{path}: no such folder (to load from the Hub, use ContinualVLM.from_pretrained).")
    return Path(path), {"path": str(Path(path).resolve())}


def check_base(backbone: Backbone, base_info: dict[str, Any], where: str) -> None:
    """Refuse a save made for another base model (config or weights fingerprint differ)."""
    for key in ("config", "weights"):
        expected = base_info.get(f"{key}_fingerprint")
        if expected and expected != backbone.fingerprints[key]:
            raise BaseMismatchError(
                f"{where} was saved for base {base_info.get('source') or 'an in-memory model'!r} "
                f"({base_info.get('model_type')}, {key} fingerprint {expected[:12]}...), but the base given "
                f"({backbone.source or 'in-memory'}, {backbone.model_type}) has {key} fingerprint "
                f"{backbone.fingerprints[key][:12]}...: the adapters were built for another base model."
            )


def _as_backbone(base: Any) -> Backbone:
    """A :class:`Backbone` from what a user passes as ``base=`` (duck-typed: no import of the model class)."""
    if isinstance(base, Backbone):
        return base
    if isinstance(getattr(base, "backbone", None), Backbone):  # a ContinualVLM
        if base.stage_order:
            raise AdapterError("pass a ContinualVLM without adapters (or its plain transformers model) as `base`.")
        return base.backbone
    if isinstance(base, tuple):
        return backbone_from_model(*base)
    raise AdapterError(
        "`base` must be a medadapt Backbone, an empty ContinualVLM or a (model, processor) tuple; "
        f"got {type(base).__name__}."
    )


def _load_base(root: Path, manifest: dict[str, Any], base: Any, **kwargs: Any) -> Backbone:
    info = manifest["base"]
    if base is not None:
        backbone = _as_backbone(base)
    elif info.get("saved_in"):
        folder = verify_files(root, info["saved_in"], info.get("files", {}), "base model", base=True)
        with quiet_weight_loading():  # no "Loading weights" bars on every load of a saved base
            backbone = load_backbone(str(folder))
        backbone.source, backbone.revision = info.get("source"), info.get("revision")
    elif info.get("source"):
        backbone = load_backbone(info["source"], revision=info.get("revision"), **kwargs)
    else:
        raise StageFileError(f"{root}: the manifest names no base source and holds no base/; pass `base=`.")
    check_family(backbone, info, str(root))
    check_base(backbone, info, str(root))
    check_base_weights(backbone, info, str(root))
    return backbone


def read_adapter(folder: Path, adapter_type: str, what: str) -> tuple[AdapterKind, Any, dict[str, torch.Tensor]]:
    """Kind, config object and weights of one adapter folder."""
    try:
        kind = adapter_kind(adapter_type)
    except AdapterError as exc:
        raise StageFileError(f"{what}: {exc}") from exc
    config, weights = kind.read(folder, what)
    return kind, config, weights


def check_family(backbone: Backbone, base_info: dict[str, Any], where: str) -> None:
    """Refuse a save made on another kind of backbone family (e.g. a generative stage on a dual encoder)."""
    saved = base_info.get("family")
    if not saved or saved == backbone.family.name:
        return
    try:
        saved_kind = family_by_name(saved).scoring
    except Exception:  # an unknown (newer) family: the fingerprints decide
        return
    if saved_kind != backbone.family.scoring:
        raise BaseMismatchError(
            f"{where} was saved on a {saved_kind} base (family {saved!r}), but this model is a "
            f"{backbone.family.scoring} ({backbone.family.name!r}): its stages cannot serve this base."
        )


def _read_stage(backbone: Backbone, root: Path, manifest: dict[str, Any], name: str, new_name: str, provenance: dict[str, Any], stages: StageTable) -> SavedStage:
    """Stage ``name`` of a save, renamed ``new_name`` (checked unused in ``stages`` before any file is read)."""
    entry = manifest["adapters"].get(name)
    saved = StageTable.from_manifest(manifest)
    domain = saved[name].domain if name in saved else None
    if domain is not None:
        domain = Domain(**{**domain.to_dict(), "name": new_name})
        check_domain_task(domain.task, backbone.family.name, backbone.family.tasks, f"domain {name!r} in {root}")
    if "repo" in provenance:  # pulled from the Hub: record that exact commit (and where the stage came from before)
        origin = {"origin": entry["source"]} if entry is not None and entry.get("source") else {}
        record = {**provenance, **origin}
    else:
        record = dict((entry or {}).get("source") or provenance)
    stages.check_new_name(new_name, "domain" if domain is not None else "shared adapter")
    if entry is None and domain is not None and domain.adapter_type == "none":
        return SavedStage(new_name, domain, None, None, None)
    if entry is None:
        raise StageFileError(f"{root}: manifest lists no adapter {name!r}; it has {list(manifest['adapters'])}.")
    what = f"adapter {name!r} in {root}"
    folder = verify_files(root, entry["path"], entry["files"], what)
    _, config, weights = read_adapter(folder, entry["type"], what)
    return SavedStage(new_name, domain, config, weights, record)


def load_save(path: str | os.PathLike, base: Any = None, revision: str | None = None, locate: Locate = local_only, **kwargs: Any) -> LoadedSave:
    """Read a save: base (given, saved or named), then every stage in order. A folder or repo without
    ``manifest.json`` is read as a plain base model. ``locate`` turns ``path`` into a local folder
    (the model passes the Hub client's :func:`medadapt.hub.pull.locate_save`)."""
    expected, recover = kwargs.pop("manifest_sha256", None), kwargs.pop("recover", False)
    root, provenance = locate(path, revision=revision, include_base=base is None, **kwargs)
    hub_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "token", "cache_dir")}
    if not (root / MANIFEST_NAME).exists() and base is None and (root / "config.json").exists():
        backbone = load_backbone(str(root), trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
        if "repo" in provenance:  # a plain base model pulled from the Hub: name it by repo id and commit
            backbone.source, backbone.revision = provenance["repo"], provenance["revision"]
        return LoadedSave(backbone, [], {})
    with read_snapshot(root, recover=recover):
        check_manifest_sha256(root, expected)
        manifest = read_manifest(root)
        backbone = _load_base(root, manifest, base, **hub_kwargs)
        fresh = StageTable()
        stages = []
        for name in manifest["stage_order"]:
            stages.append(_read_stage(backbone, root, manifest, name, name, {**provenance, "adapter": name}, fresh))
    return LoadedSave(backbone, stages, dict(manifest.get("extras") or {}))


def read_stage(backbone: Backbone, stages: StageTable, path: str | os.PathLike, name: str | None = None, as_name: str | None = None, revision: str | None = None, locate: Locate = local_only, **kwargs: Any) -> SavedStage:
    """One stage of another save (local or Hub), checked against ``backbone`` and named ``as_name`` (unused in ``stages``)."""
    expected, recover = kwargs.pop("manifest_sha256", None), kwargs.pop("recover", False)
    hub = {"stages": [name] if name else None, "include_base": False}  # Hub: fetch only this stage
    root, provenance = locate(path, revision=revision, **hub, **kwargs)
    if not (root / MANIFEST_NAME).exists() and (root.parent / MANIFEST_NAME).exists():
        name = name or root.name
        root = root.parent
    with read_snapshot(root, recover=recover):
        check_manifest_sha256(root, expected)
        manifest = read_manifest(root)
        check_family(backbone, manifest["base"], str(path))
        check_base(backbone, manifest["base"], str(path))
        check_base_weights(backbone, manifest["base"], str(path))
        if name is None:
            if len(manifest["stage_order"]) != 1:
                raise AdapterError(f"{path} holds {manifest['stage_order']}; say which one with `name=`.")
            name = manifest["stage_order"][0]
        return _read_stage(backbone, root, manifest, name, as_name or name, {**provenance, "adapter": name}, stages)
