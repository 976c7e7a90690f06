"""Save a ContinualVLM as composable stage folders, and load saves (whole or one stage at a time).

Layout of a save::

    manifest.json                 base, domains in order, adapters, sha256 of every file
    <adapter>/adapter_config.json + adapter_model.safetensors      (LoRA: standard peft folder)
    <adapter>/prompt_config.json  + prompt_model.safetensors       (prompt adapter)
    base/...                      (only when the base cannot be reloaded from a Hub id or folder)

Saves are transactions (:mod:`medadapt.hub.transaction`): new folders are staged, a journal records
the swap, and the new manifest is the commit point, so a failed or killed save leaves the folder
loading as the complete previous save or the complete new one; the writer holds the folder's lock
(:mod:`medadapt.locking`) and readers load a consistent snapshot. Unchanged adapter folders are
left untouched (byte-identical).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from .. import __version__
from .._io import read_json_file, storage_errors
from ..adapters import AdapterKind, adapter_kind
from ..backbones import Backbone, backbone_from_model, load_backbone, save_backbone
from ..base_files import quiet_weight_loading
from ..domains import Domain
from ..errors import AdapterError, BaseMismatchError, StageFileError
from ..families import family_by_name
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, check_manifest_sha256, hash_folder, read_manifest, verify_files
from .schema import check_domain_task
from .transaction import SaveTransaction, read_snapshot
from .weights_digest import base_weights_sha256, check_base_weights

if TYPE_CHECKING:  # pragma: no cover
    from ..model import ContinualVLM

BASE_FOLDER = "base"


# -- saving ----------------------------------------------------------------------------------------
def _write_adapter(model: "ContinualVLM", name: str, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    kind = model.adapters.kind_of(name)
    kind.write_config(model.adapters, name, folder, model.backbone.source, model.backbone.revision)
    state = {k: v.detach().cpu().contiguous() for k, v in kind.state_dict(model.adapters, name).items()}
    save_file(state, str(folder / kind.files[1]), metadata={"format": "pt"})
    return hash_folder(folder, kind.files)


def build_manifest(model: "ContinualVLM", adapters: dict[str, dict[str, Any]], base_files: dict[str, str] | None) -> dict[str, Any]:
    """The manifest dict for ``model`` given each adapter's files entry."""
    backbone = model.backbone
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medadapt_version": __version__,
        "base": {
            "source": backbone.source,
            "revision": backbone.revision,
            "family": backbone.family.name,
            "model_type": backbone.model_type,
            "config_fingerprint": backbone.fingerprints["config"],
            "weights_fingerprint": backbone.fingerprints["weights"],
            "saved_in": BASE_FOLDER if base_files else None,
            "files": base_files or {},
            **backbone.family.manifest_fields(backbone),
        },
        "domains": [model.domains[n].to_dict() for n in model.stage_order if n in model.domains],
        "shared": [{"name": n, "adapter_type": model.shared[n]} for n in model.stage_order if n in model.shared],
        "stage_order": list(model.stage_order),
        "adapters": adapters,
        "extras": model.extras,
    }


def base_needs_saving(model: "ContinualVLM") -> bool:
    """Whether the base cannot be reloaded from its source (built in memory, or a built-in tiny model)."""
    source = model.backbone.source
    return source is None or source.startswith("medadapt/tiny-")


def save_model(model: "ContinualVLM", save_directory: str | os.PathLike, save_base: bool | None = None) -> dict[str, Any]:
    """Write the model's stages into ``save_directory`` as one transaction (see :mod:`medadapt.hub.transaction`);
    returns the manifest."""
    target = Path(save_directory)
    with storage_errors(f"cannot save to {target}"):
        target.mkdir(parents=True, exist_ok=True)
        with SaveTransaction(target) as tx:
            return _stage_and_commit(model, target, tx, save_base)


def _stage_and_commit(model: "ContinualVLM", target: Path, tx: SaveTransaction, save_base: bool | None) -> dict[str, Any]:
    staging = tx.staging
    entries: dict[str, dict[str, Any]] = {}
    for name in model.adapter_names():
        files = _write_adapter(model, name, staging / name)
        entry = {"type": model.adapter_type(name), "path": name, "files": files}
        if name in model.provenance:
            entry["source"] = model.provenance[name]
        entries[name] = entry
    base_files: dict[str, str] | None = None
    if save_base if save_base is not None else base_needs_saving(model):
        save_backbone(model.backbone, str(staging / BASE_FOLDER))
        names = sorted(p.name for p in (staging / BASE_FOLDER).iterdir() if p.is_file())
        base_files = hash_folder(staging / BASE_FOLDER, names)
    manifest = build_manifest(model, entries, base_files)
    if base_files:  # medadapt wrote the base: record a hash over all its tensors (the fingerprint samples a few)
        manifest["base"]["weights_sha256"] = base_weights_sha256(model.backbone)
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
def local_folder(path: str | os.PathLike, revision: str | None = None, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """A local folder for ``path``; a Hub repo id is downloaded (see :mod:`medadapt.hub.pull`).

    Returns the folder and a provenance dict (``{"path": ...}`` or ``{"repo": ..., "revision": ...}``).
    """
    if os.path.isdir(path):
        return Path(path), {"path": str(Path(path).resolve())}
    from .pull import download_save  # network / cache access lives there

    return download_save(str(path), revision=revision, **kwargs)


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
        saved_kind = family_by_name(saved).kind
    except Exception:  # an unknown (newer) family: the fingerprints decide
        return
    if saved_kind != backbone.family.kind:
        raise BaseMismatchError(
            f"{where} was saved on a {saved_kind} base (family {saved!r}), but this model is a "
            f"{backbone.family.kind} ({backbone.family.name!r}): its stages cannot serve this base."
        )


def _restore(model: "ContinualVLM", root: Path, manifest: dict[str, Any], name: str, new_name: str, provenance: dict[str, Any]) -> None:
    entry = manifest["adapters"].get(name)
    domains = {d["name"]: d for d in manifest["domains"]}
    domain = Domain(**{**domains[name], "name": new_name}) if name in domains else None
    if domain is not None:
        check_domain_task(domain.task, model.family.name, model.family.tasks, f"domain {name!r} in {root}")
    if "repo" in provenance:  # pulled from the Hub: record that exact commit (and where the stage came from before)
        origin = {"origin": entry["source"]} if entry is not None and entry.get("source") else {}
        record = {**provenance, **origin}
    else:
        record = dict((entry or {}).get("source") or provenance)
    model.check_new_name(new_name, "domain" if domain is not None else "shared adapter")
    if entry is None and domain is not None and domain.adapter_type == "none":
        model.add_stage(new_name, domain=domain, adapter="none")
        return
    if entry is None:
        raise StageFileError(f"{root}: manifest lists no adapter {name!r}; it has {list(manifest['adapters'])}.")
    what = f"adapter {name!r} in {root}"
    folder = verify_files(root, entry["path"], entry["files"], what)
    _, config, weights = read_adapter(folder, entry["type"], what)
    model.add_stage(new_name, domain=domain, adapter=config, weights=weights, provenance=record)


def load_model(cls: type, path: str | os.PathLike, base: Any = None, revision: str | None = None, **kwargs: Any) -> "ContinualVLM":
    """Restore a save: base (given, saved or named), then every adapter in stage order."""
    expected, recover = kwargs.pop("manifest_sha256", None), kwargs.pop("recover", False)
    root, provenance = local_folder(path, revision=revision, include_base=base is None, **kwargs)
    hub_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "token", "cache_dir")}
    if not (root / MANIFEST_NAME).exists() and base is None and (root / "config.json").exists():
        model = cls.from_base(str(root), trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
        if "repo" in provenance:  # a plain base model pulled from the Hub: name it by repo id and commit
            model.backbone.source, model.backbone.revision = provenance["repo"], provenance["revision"]
        return model
    with read_snapshot(root, recover=recover):
        check_manifest_sha256(root, expected)
        manifest = read_manifest(root)
        model = cls(_load_base(root, manifest, base, **hub_kwargs))
        for name in manifest["stage_order"]:
            _restore(model, root, manifest, name, name, {**provenance, "adapter": name})
    model.extras = dict(manifest.get("extras") or {})
    return model


def load_stage(model: "ContinualVLM", path: str | os.PathLike, name: str | None = None, as_name: str | None = None, revision: str | None = None, **kwargs: Any) -> str:
    """Compose one stage of another save (local or Hub) into ``model``; returns its name here."""
    expected, recover = kwargs.pop("manifest_sha256", None), kwargs.pop("recover", False)
    hub = {"stages": [name] if name else None, "include_base": False}  # Hub: fetch only this stage
    root, provenance = local_folder(path, revision=revision, **hub, **kwargs)
    if not (root / MANIFEST_NAME).exists() and (root.parent / MANIFEST_NAME).exists():
        name = name or root.name
        root = root.parent
    with read_snapshot(root, recover=recover):
        check_manifest_sha256(root, expected)
        manifest = read_manifest(root)
        check_family(model.backbone, manifest["base"], str(path))
        check_base(model.backbone, manifest["base"], str(path))
        check_base_weights(model.backbone, manifest["base"], str(path))
        if name is None:
            if len(manifest["stage_order"]) != 1:
                raise AdapterError(f"{path} holds {manifest['stage_order']}; say which one with `name=`.")
            name = manifest["stage_order"][0]
        _restore(model, root, manifest, name, as_name or name, {**provenance, "adapter": name})
    return as_name or name
