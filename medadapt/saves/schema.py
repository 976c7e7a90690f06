"""The shape of ``manifest.json``, checked before anything in it is used.

A manifest is data from outside (a folder anyone could edit, a Hub repo anyone could push to), so
every field is checked for its type and allowed values here, and each problem becomes a
:class:`~medadapt.errors.StageFileError` that names the field. In particular every adapter entry must
list (and so hash) every file its adapter kind needs: an entry with ``"files": {}`` is refused
instead of loading unchecked weights.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from ..domains import Domain
from ..errors import StageFileError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _required_files() -> dict[str, tuple[str, ...]]:
    """Files each registered adapter kind needs in its stage folder; every one must be listed with its sha256."""
    from ..adapters import adapter_kind, adapter_kinds

    return {name: tuple(adapter_kind(name).files) for name in adapter_kinds()}


def _fail(where: str, problem: str) -> None:
    raise StageFileError(f"{where}: {problem}")


def _expect(value: Any, kinds: type | tuple[type, ...], where: str, field: str) -> Any:
    """``value`` if it has one of ``kinds`` (a bool never counts as an int), else StageFileError."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = " or ".join("null" if k is type(None) else {"dict": "object", "list": "list", "str": "string"}.get(k.__name__, k.__name__) for k in kinds)
        _fail(where, f"{field} must be {names}, got {type(value).__name__} {value!r:.80}.")
    return value


def _files(files: Any, where: str, field: str) -> dict[str, str]:
    _expect(files, dict, where, field)
    for name, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            _fail(where, f"{field}[{name!r}] must be a sha256 (64 lowercase hex digits), got {digest!r:.80}.")
    return files


def validate_manifest(manifest: Any, where: str, format_name: str, max_version: int) -> dict[str, Any]:
    """Check the structure of a parsed manifest; returns it unchanged or raises StageFileError."""
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        _fail(where, f"not a medadapt manifest (format {found!r}, expected {format_name!r}).")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        _fail(where, f"format_version must be a positive integer, got {version!r}.")
    if version > max_version:
        _fail(where, f"has format_version {version!r}; this medadapt reads up to {max_version}. Upgrade medadapt.")
    for key in ("base", "domains", "shared", "adapters", "stage_order"):
        if key not in manifest:
            _fail(where, f"misses the key {key!r}.")
    _base(_expect(manifest["base"], dict, where, "base"), where)
    adapters = _expect(manifest["adapters"], dict, where, "adapters")
    required = _required_files()
    for name, entry in adapters.items():
        _adapter(name, entry, where, required)
    domains = _expect(manifest["domains"], list, where, "domains")
    for i, spec in enumerate(domains):
        _domain(spec, where, f"domains[{i}]", (*required, "none"))
    shared = _expect(manifest["shared"], list, where, "shared")
    for i, spec in enumerate(shared):
        _expect(spec, dict, where, f"shared[{i}]")
        _expect(spec.get("name"), str, where, f"shared[{i}].name")
        if spec.get("adapter_type") not in required:
            _fail(where, f"shared[{i}].adapter_type must be one of {sorted(required)}, got {spec.get('adapter_type')!r}.")
    order = _expect(manifest["stage_order"], list, where, "stage_order")
    for i, name in enumerate(order):
        _expect(name, str, where, f"stage_order[{i}]")
    if len(set(order)) != len(order):
        _fail(where, f"stage_order lists a stage twice: {order}.")
    without_adapter = {d["name"] for d in domains if d.get("adapter_type") == "none"}
    for name in order:
        if name not in adapters and name not in without_adapter:
            _fail(where, f"stage {name!r} in stage_order has no entry in adapters (and is no domain without adapter).")
    for name, entry in adapters.items():
        kinds = {d["name"]: d["adapter_type"] for d in domains} | {s["name"]: s["adapter_type"] for s in shared}
        if name in kinds and kinds[name] != entry["type"]:
            _fail(where, f"adapter {name!r} is of type {entry['type']!r} but its domain says {kinds[name]!r}.")
    _expect(manifest.get("extras") or {}, dict, where, "extras")
    return manifest


def _base(base: dict[str, Any], where: str) -> None:
    for key in ("source", "revision", "family", "model_type", "saved_in", "config_fingerprint", "weights_fingerprint", "weights_sha256"):
        _expect(base.get(key), (str, type(None)), where, f"base.{key}")
    files = _files(base.get("files") or {}, where, "base.files")
    if base.get("saved_in"):
        if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
            _fail(where, "base.files must list the saved base's config.json and its .safetensors weights with their sha256.")


def _adapter(name: Any, entry: Any, where: str, required: dict[str, tuple[str, ...]]) -> None:
    field = f"adapters[{name!r}]"
    _expect(entry, dict, where, field)
    kind = entry.get("type")
    if kind not in required:
        _fail(where, f"{field}.type must be one of {sorted(required)}, got {kind!r}.")
    _expect(entry.get("path"), str, where, f"{field}.path")
    files = _files(entry.get("files"), where, f"{field}.files")
    for filename in files:
        if not filename.endswith((".json", ".safetensors")):
            _fail(where, f"{field}: file {filename!r} is not safetensors or JSON; medadapt never loads pickled files.")
    missing = [f for f in required[kind] if f not in files]
    if missing:
        _fail(
            where,
            f"{field}.files does not list {missing}: every file a {kind} adapter needs must be listed with its "
            "sha256, so that it is verified before it is loaded.",
        )
    _expect(entry.get("source") or {}, dict, where, f"{field}.source")


def _domain(spec: Any, where: str, field: str, kinds: tuple[str, ...]) -> None:
    _expect(spec, dict, where, field)
    known = [f.name for f in fields(Domain)]
    unknown = sorted(str(k) for k in spec if k not in known)
    if unknown:
        _fail(where, f"{field} has unknown key(s) {unknown}; a domain entry holds only {known}.")
    _expect(spec.get("task", "classification"), str, where, f"{field}.task")
    _expect(spec.get("name"), str, where, f"{field}.name")
    labels = _expect(spec.get("labels"), list, where, f"{field}.labels")
    for j, label in enumerate(labels):
        _expect(label, str, where, f"{field}.labels[{j}]")
    _expect(spec.get("prompt", "{}"), str, where, f"{field}.prompt")
    if spec.get("adapter_type", "lora") not in kinds:
        _fail(where, f"{field}.adapter_type must be one of {list(kinds)}, got {spec.get('adapter_type')!r}.")
    _expect(spec.get("metadata") or {}, dict, where, f"{field}.metadata")


def check_domain_task(task: str, family_name: str, family_tasks: tuple[str, ...], where: str) -> None:
    """Refuse a saved domain whose task the loading base's family cannot serve (a ``vqa`` domain on a dual encoder)."""
    if task not in family_tasks:
        _fail(where, f"the domain has task {task!r}, which the {family_name!r} family of this base cannot serve "
                     f"(it serves {list(family_tasks)}); a 'vqa' domain needs a generative base.")
