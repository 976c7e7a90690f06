"""Publish a ContinualVLM's stages to a Hugging Face Hub model repo, one commit per push.

A service over the model's parts (:class:`~medadapt.saves.io.ModelParts`): it never imports or changes
the model. A push saves the parts with :func:`medadapt.saves.io.save_model` into a temporary folder, merges its manifest
with the one already in the repo, and uploads the chosen adapter folders, ``manifest.json`` and a model card
with ``HfApi.upload_folder``. The client skips files whose content the Hub already has, so pushing after each
continual stage adds one adapter folder per commit and never re-uploads unchanged stages.

The repo's ``manifest.json`` always describes what the repo holds:

* ``domains=None`` pushes the whole model; the repo then mirrors it (stages the model no longer has are
  deleted in the same commit);
* ``domains=[...]`` pushes only those stages; stages already in the repo are kept as they are.

Tokens are handed to ``huggingface_hub`` only (``token=`` or its usual places: ``HF_TOKEN``, ``hf auth login``);
they are never written into manifests, cards or logs. Local file paths are not published either.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .._io import atomic_write_json
from ..errors import AdapterError, BaseMismatchError, HubError, StageFileError
from .card import base_license, hub_base_id, is_medadapt_card, render_card
from ..saves.io import BASE_FOLDER, ModelParts, base_needs_saving, save_model
from .pull import offline_mode
from .repo_id import check_repo_id
from ..saves.manifest import MANIFEST_NAME, read_manifest

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import CommitInfo, HfApi

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
OFFLINE_MESSAGE = (
    "push_to_hub needs the network, but Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1 or "
    "huggingface_hub's offline constant). Unset HF_HUB_OFFLINE to push, or save locally with save_pretrained(folder)."
)
_SOURCE_KEYS = ("repo", "revision", "requested_revision", "adapter")


def _needs_base(parts: ModelParts, save_base: bool | None) -> bool:
    """Publish ``base/`` unless the base can be reloaded by others from its Hub id."""
    if save_base is not None:
        return save_base
    return base_needs_saving(parts.backbone) or os.path.exists(parts.backbone.source)


def _save_for_publishing(parts: ModelParts, folder: Path, save_base: bool | None) -> dict[str, Any]:
    """``save_model`` into ``folder``; a base loaded from a local folder is published as ``base/``, unnamed
    (its local path would otherwise land in the manifest and in each adapter_config.json)."""
    source = parts.backbone.source
    local = source is not None and os.path.exists(source)
    with_base = True if local else _needs_base(parts, save_base)
    published = ModelParts(parts.backbone, parts.adapters, parts.stages, parts.extras, anonymous_base=local)
    return save_model(published, folder, save_base=with_base)


def public_source(source: dict[str, Any] | None) -> dict[str, Any] | None:
    """Provenance safe to publish: Hub repo + revision (nested ``origin`` too); local paths are dropped."""
    if not isinstance(source, dict) or not source.get("repo"):
        return None
    out = {k: source[k] for k in _SOURCE_KEYS if source.get(k) is not None}
    origin = public_source(source.get("origin"))
    if origin:
        out["origin"] = origin
    return out


def _remote_state(api: "HfApi", repo_id: str, revision: str, token: str | bool | None) -> tuple[dict[str, Any] | None, str | None]:
    """The repo's current manifest (None when it has none) and README text (None when absent)."""
    from huggingface_hub import hf_hub_download

    files = set(api.list_repo_files(repo_id, revision=revision))
    manifest = readme = None
    if MANIFEST_NAME in files:
        path = Path(hf_hub_download(repo_id, MANIFEST_NAME, revision=revision, token=token))
        try:
            manifest = read_manifest(path.parent)
        except StageFileError as exc:
            raise StageFileError(
                f"{repo_id}@{revision} already holds a manifest.json medadapt cannot use ({exc}); "
                "push to another repo or remove it first."
            ) from exc
    if CARD_NAME in files:
        readme = Path(hf_hub_download(repo_id, CARD_NAME, revision=revision, token=token)).read_text(encoding="utf-8", errors="replace")
    return manifest, readme


def merge_manifest(new: dict[str, Any], old: dict[str, Any] | None, names: Sequence[str], mirror: bool, repo_id: str) -> tuple[dict[str, Any], list[str]]:
    """The manifest of the repo after pushing stages ``names`` of ``new``; also the folders to delete.

    ``mirror``: the repo ends up with exactly the stages of ``new``, in model order; otherwise stages already in
    ``old`` and not pushed are kept (with their old entries) in the repo's order and new ones are appended.
    """
    entries = {n: dict(new["adapters"][n]) for n in names if n in new["adapters"]}
    for entry in entries.values():
        source = public_source(entry.pop("source", None))
        if source:
            entry["source"] = source
    specs = {d["name"]: d for d in new["domains"]}
    shared = {s["name"]: s for s in new["shared"]}
    order = [n for n in new["stage_order"] if n in names]
    base, extras = new["base"], dict(new.get("extras") or {})
    removed: list[str] = []
    if old:
        for key in ("config_fingerprint", "weights_fingerprint"):
            if old["base"].get(key) and old["base"][key] != base.get(key):
                raise BaseMismatchError(
                    f"{repo_id} holds stages for base {old['base'].get('source')!r} ({key.split('_')[0]} fingerprint "
                    f"{old['base'][key][:12]}...), but this model's base has {base.get(key, '')[:12]}...: "
                    "a repo holds stages of one base model; push to another repo."
                )
        if old["base"].get("saved_in"):
            # same base (fingerprints checked above) already in the repo: keep it and its file hashes, so base/
            # is never re-uploaded (tokenizer.json, for one, records runtime padding state and changes on use)
            base = old["base"]
        kept = [] if mirror else [n for n in old["stage_order"] if n not in names]
        entries.update({n: old["adapters"][n] for n in kept if n in old["adapters"]})
        specs.update({d["name"]: d for d in old["domains"] if d["name"] in kept})
        shared.update({s["name"]: s for s in old["shared"] if s["name"] in kept})
        if not mirror:  # partial push: the repo's order, then the new stages in model order
            order = [n for n in old["stage_order"] if n in kept or n in order] + [n for n in order if n not in old["stage_order"]]
            extras = {**(old.get("extras") or {}), **extras}
        removed = sorted({e["path"] for n, e in old["adapters"].items() if n not in entries} - {e["path"] for e in entries.values()})
    manifest = {
        **new,
        "base": base,
        "adapters": entries,
        "stage_order": order,
        "domains": [specs[n] for n in order if n in specs],
        "shared": [shared[n] for n in order if n in shared],
        "extras": extras,
    }
    return manifest, removed


def _kind(manifest: dict[str, Any], name: str) -> str:
    entry = manifest["adapters"].get(name)
    return entry["type"] if entry else "no adapter"


def default_commit_message(manifest: dict[str, Any], old: dict[str, Any] | None, names: Sequence[str], removed: Sequence[str]) -> str:
    """E.g. ``"Add stage 2/3: derm (lora)"``; lists added, updated and removed stages."""
    before = (old or {}).get("adapters", {})
    order = manifest["stage_order"]
    added = [n for n in order if n in names and n not in (old or {}).get("stage_order", [])]
    updated = [n for n in order if n in names and n in before and before[n]["files"] != manifest["adapters"].get(n, {}).get("files")]
    parts = []
    if added:
        described = ", ".join(f"{n} ({_kind(manifest, n)})" for n in added)
        numbers = ", ".join(str(order.index(n) + 1) for n in added)
        parts.append(f"Add stage{'s' if len(added) > 1 else ''} {numbers}/{len(order)}: {described}")
    if updated:
        parts.append(f"Update {', '.join(updated)}")
    if removed:
        parts.append(f"Remove {', '.join(removed)}")
    return "; ".join(parts) or "Update medadapt manifest and model card"


def _stage_names(parts: ModelParts, domains: Sequence[str] | str | None) -> list[str]:
    order = parts.stages.order
    if not order:
        raise AdapterError("this model has no domains or shared adapters yet: nothing to push.")
    if domains is None:
        return order
    names = [domains] if isinstance(domains, str) else list(domains)
    unknown = [n for n in names if n not in order]
    if unknown or not names:
        raise AdapterError(f"cannot push {unknown or 'no stages'}: this model has {order}.")
    return names


def validate_card(card: Any) -> None:
    """Refuse a card whose metadata the Hub's ``validate-yaml`` endpoint rejects (before any upload).

    Posts to the endpoint in use (``HF_ENDPOINT``), as ``ModelCard.validate`` does in recent huggingface_hub;
    older releases (1.31) post to huggingface.co whatever the endpoint, so medadapt makes the call itself."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    response = get_session().post(f"{constants.ENDPOINT}/api/validate-yaml", json={"repoType": "model", "content": str(card)},
                                  headers={"Accept": "text/plain"})
    if response.status_code == 400:
        raise HubError(f"the model card's metadata does not pass the Hub's validation: {response.text}")
    hf_raise_for_status(response)


def push_model(
    parts: ModelParts,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    domains: Sequence[str] | str | None = None,
    token: str | bool | None = None,
    results: dict[str, Any] | str | os.PathLike | None = None,
    overwrite_card: bool = False,
    save_base: bool | None = None,
    license: str | None = None,
) -> "CommitInfo":
    """Upload stages of a model's ``parts`` (all, or ``domains``) plus manifest and model card as one commit.

    ``license``: the card's licence (a Hub licence id); default: the base model's own licence, read from its
    Hub card (gated bases such as MedGemma carry their own terms). The card is checked with the Hub's
    ``validate-yaml`` endpoint before anything is uploaded.

    ``revision`` is the branch to commit to (created from main if missing). ``results`` (dict or
    ``results.json`` path; default ``parts.extras["results"]``) fills the card's metrics. A README.md in the repo
    that medadapt did not write is kept unless ``overwrite_card=True``. Returns the ``CommitInfo``
    (``.oid`` is the commit sha to pin with ``from_pretrained(..., revision=...)``).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    names = _stage_names(parts, domains)
    check_repo_id(repo_id)
    if offline_mode():
        raise HubError(OFFLINE_MESSAGE)
    api = HfApi(token=token)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    except OfflineModeIsEnabled as exc:  # offline mode switched on after huggingface_hub was imported
        raise HubError(OFFLINE_MESSAGE) from exc
    branch = revision or "main"
    if branch != "main":
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    old, readme = _remote_state(api, repo_id, branch, token)
    with tempfile.TemporaryDirectory(prefix="medadapt-push-") as tmp:
        save_dir, upload = Path(tmp) / "save", Path(tmp) / "upload"
        full = _save_for_publishing(parts, save_dir, save_base)
        manifest, removed = merge_manifest(full, old, names, mirror=domains is None, repo_id=repo_id)
        upload.mkdir()
        for name in (n for n in names if n in full["adapters"]):
            shutil.copytree(save_dir / full["adapters"][name]["path"], upload / full["adapters"][name]["path"])
        if full["base"].get("saved_in") and manifest["base"] == full["base"]:
            shutil.copytree(save_dir / BASE_FOLDER, upload / BASE_FOLDER)
        atomic_write_json(upload / MANIFEST_NAME, manifest)
        if readme is None or is_medadapt_card(readme) or overwrite_card:
            terms = license if license is not None else base_license(hub_base_id(manifest["base"]), manifest["base"].get("revision"), token)
            card = render_card(manifest, repo_id, results=results, revision=branch, license=terms)  # default: extras
            validate_card(card)
            card.save(str(upload / CARD_NAME))
        else:
            logger.warning("%s already has a README.md not written by medadapt: kept as is "
                           "(push with overwrite_card=True to replace it).", repo_id)
        message = commit_message or default_commit_message(manifest, old, names, removed)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(upload), revision=branch, commit_message=message,
            commit_description=commit_description, delete_patterns=[f"{p}/*" for p in removed] or None,
        )
    logger.info("pushed %s to %s@%s (commit %s)", ", ".join(names), repo_id, branch, info.oid)
    return info
