"""Push/pull ContinualVLM stages through the real ``huggingface_hub`` client against ``tests.hub_server.FakeHub``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, constants
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from medadapt import AdapterError, BaseMismatchError, ContinualVLM, PromptConfig, StageFileError
from medadapt.saves.manifest import MANIFEST_NAME
from medadapt.tiny import tiny_backbone
from tests.hub_server import TOKEN
from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)
from tests.conftest import unchanged

REPO = "medadapt-test/continual"
STAGES = {
    "chest": (["normal", "pneumonia"], "a chest x-ray showing {}."),
    "derm": (["benign", "malignant", "nevus"], "a skin photo of {}."),
    "fundus": (["healthy", "retinopathy"], "a fundus image of {}."),
}
IMAGES = [np.random.RandomState(i).rand(24 + 8 * i, 32, 3).astype(np.float32) for i in range(2)]


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def add_stage(model: ContinualVLM, name: str, seed: int) -> None:
    """LoRA stages (non-identity); ``fundus`` is a perturbed prompt adapter so both kinds travel."""
    labels, prompt = STAGES[name]
    torch.manual_seed(seed)
    if name == "fundus":
        model.add_domain(name, labels, prompt, adapter=PromptConfig(n_visual_tokens=2), seed=seed)
        with torch.no_grad():
            for param in model.prompt_adapters[name].parameters():
                param.add_(torch.randn(param.shape) * 0.5)
    else:
        model.add_domain(name, labels, prompt, adapter=lora())


def probs(model: ContinualVLM) -> dict[str, torch.Tensor]:
    return {d: model.predict_proba(IMAGES, domain=d) for d in model.domains}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def snapshot_files(repo_id: str, sha: str, cache_dir: Path | None = None) -> set[str]:
    """Files of one cached snapshot (what was downloaded at that commit)."""
    folder = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / sha
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def go_offline(monkeypatch, hub) -> None:
    hub.stop()  # nothing answers any more: every lookup must come from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def staged(fake_hub):  # noqa: F811
    """Push after each of three stages: returns the model, each commit sha and the predictions after each stage."""
    model = ContinualVLM(tiny_backbone("clip"))
    oids = []
    for i, name in enumerate(STAGES):
        add_stage(model, name, seed=10 + i)
        oids.append(model.push_to_hub(REPO).oid)
    final = probs(model)  # a domain's predictions only depend on its own adapter: later stages do not change them
    outputs = [{d: final[d] for d in list(STAGES)[: i + 1]} for i in range(len(STAGES))]
    return model, oids, outputs


# -- push --------------------------------------------------------------------------------------------
def test_three_stages_are_three_commits_uploading_only_the_new_stage(fake_hub, staged):  # noqa: F811
    _, oids, _ = staged
    commits = fake_hub.commits(REPO)
    assert [c["oid"] for c in commits[1:]] == oids
    assert [c["title"] for c in commits[1:]] == [
        "Add stage 1/1: chest (lora)", "Add stage 2/2: derm (lora)", "Add stage 3/3: fundus (prompt)"]
    first = set(commits[1]["paths"])
    assert {"chest/adapter_config.json", "chest/adapter_model.safetensors", MANIFEST_NAME, "README.md"} <= first
    assert any(p.startswith("base/") for p in first)  # an in-memory base travels in base/
    assert commits[2]["paths"] == sorted(["README.md", MANIFEST_NAME, "derm/adapter_config.json", "derm/adapter_model.safetensors"])
    assert commits[3]["paths"] == sorted(["README.md", MANIFEST_NAME, "fundus/prompt_config.json", "fundus/prompt_model.safetensors"])
    # the history, as the Hub client shows it (newest first), lists the stages in order
    history = [c.title for c in HfApi().list_repo_commits(REPO)]
    assert history[:3] == ["Add stage 3/3: fundus (prompt)", "Add stage 2/2: derm (lora)", "Add stage 1/1: chest (lora)"]
    manifest = json.loads(fake_hub.files(REPO)[MANIFEST_NAME])
    assert manifest["stage_order"] == list(STAGES)
    assert manifest["base"]["saved_in"] == "base"


def test_pushing_an_unchanged_model_uploads_nothing(fake_hub, staged):  # noqa: F811
    model, oids, _ = staged
    assert model.push_to_hub(REPO).oid == oids[-1]  # the client skips the empty commit
    assert len(fake_hub.commits(REPO)) == 4


def test_push_to_branch_and_custom_message(fake_hub):  # noqa: F811
    model = ContinualVLM(tiny_backbone("clip"))
    add_stage(model, "chest", 1)
    info = model.push_to_hub(REPO, revision="dev", commit_message="chest on dev", private=True)
    assert fake_hub.commits(REPO, revision="dev")[-1]["title"] == "chest on dev"
    assert list(fake_hub.files(REPO, "main")) == [".gitattributes"]
    pulled = ContinualVLM.from_pretrained(REPO, revision="dev")
    assert pulled.provenance["chest"]["revision"] == info.oid
    assert pulled.provenance["chest"]["requested_revision"] == "dev"
    assert_same(probs(pulled), probs(model))


def test_push_selected_domains_keeps_the_rest_and_full_push_mirrors(fake_hub):  # noqa: F811
    model = ContinualVLM(tiny_backbone("clip"))
    for i, name in enumerate(STAGES):
        add_stage(model, name, 20 + i)
    torch.manual_seed(5)
    model.add_shared_adapter("generalist", lora())
    model.push_to_hub(REPO, domains=["derm"])
    assert json.loads(fake_hub.files(REPO)[MANIFEST_NAME])["stage_order"] == ["derm"]
    assert not any(p.startswith(("chest/", "fundus/")) for p in fake_hub.files(REPO))
    model.push_to_hub(REPO, domains=["generalist", "chest"])
    assert fake_hub.commits(REPO)[-1]["title"] == "Add stages 2, 3/3: chest (lora), generalist (lora)"
    pulled = ContinualVLM.from_pretrained(REPO)
    assert pulled.stage_order == ["derm", "chest", "generalist"] and list(pulled.shared) == ["generalist"]
    want = probs(model)
    assert_same(probs(pulled), {d: want[d] for d in ("derm", "chest")})
    assert torch.equal(pulled.predict_proba(IMAGES, "chest", adapter="generalist"),
                       model.predict_proba(IMAGES, "chest", adapter="generalist"))
    # a full push mirrors the model: a stage the model dropped is deleted in the same commit
    model.remove_domain("derm")
    model.push_to_hub(REPO)
    last = fake_hub.commits(REPO)[-1]
    assert last["title"].startswith("Add stage") and last["title"].endswith("Remove derm")
    assert sorted(last["deleted"]) == ["derm/adapter_config.json", "derm/adapter_model.safetensors"]
    assert json.loads(fake_hub.files(REPO)[MANIFEST_NAME])["stage_order"] == ["chest", "fundus", "generalist"]


def test_push_refuses_another_base_and_unknown_stage(fake_hub, staged):  # noqa: F811
    other = ContinualVLM(tiny_backbone("clip", seed=1))
    add_stage(other, "chest", 1)
    with pytest.raises(BaseMismatchError, match="one base model"):
        other.push_to_hub(REPO)
    with pytest.raises(AdapterError, match="cannot push"):
        other.push_to_hub(REPO, domains=["nope"])
    with pytest.raises(AdapterError, match="nothing to push"):
        ContinualVLM(tiny_backbone("clip")).push_to_hub("medadapt-test/empty")


# -- pull --------------------------------------------------------------------------------------------
def test_pull_latest_gives_identical_predictions_and_records_the_commit(staged):
    model, oids, outputs = staged
    pulled = ContinualVLM.from_pretrained(REPO)
    assert pulled.stage_order == model.stage_order
    assert_same(probs(pulled), outputs[-1])
    assert pulled.provenance["derm"] == {"repo": REPO, "revision": oids[-1], "requested_revision": "main", "adapter": "derm"}


def test_pull_pinned_earlier_revision_downloads_only_that_stage_set(staged, tmp_path):
    _, oids, outputs = staged
    pulled = ContinualVLM.from_pretrained(REPO, revision=oids[1], cache_dir=tmp_path / "cache")
    assert pulled.stage_order == ["chest", "derm"]
    assert_same(probs(pulled), outputs[1])
    files = snapshot_files(REPO, oids[1], tmp_path / "cache")
    assert MANIFEST_NAME in files and "README.md" not in files and not any(f.startswith("fundus/") for f in files)
    assert {"chest/adapter_model.safetensors", "derm/adapter_model.safetensors", "base/model.safetensors"} <= files


def test_pull_with_a_user_base_skips_base_folder_and_checks_fingerprint(staged, tmp_path):
    _, oids, outputs = staged
    cache = tmp_path / "cache"
    pulled = ContinualVLM.from_pretrained(REPO, base=ContinualVLM(tiny_backbone("clip")), revision=oids[-1], cache_dir=cache)
    assert_same(probs(pulled), outputs[-1])
    assert not any(f.startswith("base/") for f in snapshot_files(REPO, oids[-1], cache))
    with pytest.raises(BaseMismatchError):
        ContinualVLM.from_pretrained(REPO, base=ContinualVLM(tiny_backbone("clip", seed=3)))


def test_compose_stages_from_two_repos(fake_hub, tmp_path):  # noqa: F811
    a = ContinualVLM(tiny_backbone("clip"))
    add_stage(a, "chest", 31)
    add_stage(a, "derm", 32)
    sha_a = a.push_to_hub("org-a/stages").oid
    b = ContinualVLM(tiny_backbone("clip"))
    add_stage(b, "fundus", 33)
    sha_b = b.push_to_hub("org-b/stages").oid

    mine = ContinualVLM(tiny_backbone("clip"))
    cache = tmp_path / "cache"
    assert mine.load_adapter("org-a/stages", name="derm", cache_dir=cache) == "derm"
    assert mine.load_adapter("org-b/stages", name="fundus", revision=sha_b) == "fundus"
    assert_same(probs(mine), {"derm": probs(a)["derm"], "fundus": probs(b)["fundus"]})
    # only the stage asked for was downloaded (no other stage, no base)
    assert snapshot_files("org-a/stages", sha_a, cache) == {MANIFEST_NAME, "derm/adapter_config.json", "derm/adapter_model.safetensors"}

    mine.save_pretrained(tmp_path / "mine")
    manifest = json.loads((tmp_path / "mine" / MANIFEST_NAME).read_text())
    assert manifest["adapters"]["derm"]["source"] == {"repo": "org-a/stages", "revision": sha_a, "requested_revision": "main", "adapter": "derm"}
    assert manifest["adapters"]["fundus"]["source"] == {"repo": "org-b/stages", "revision": sha_b, "requested_revision": sha_b, "adapter": "fundus"}
    reloaded = ContinualVLM.from_pretrained(tmp_path / "mine")
    assert reloaded.provenance["derm"]["revision"] == sha_a  # a local reload keeps where each stage came from
    assert_same(probs(reloaded), probs(mine))

    # publishing the composition keeps the Hub provenance, never local paths
    mine.push_to_hub("org-c/composed")
    published = json.loads(fake_hub.files("org-c/composed")[MANIFEST_NAME])
    assert published["adapters"]["fundus"]["source"]["repo"] == "org-b/stages"
    assert str(tmp_path) not in json.dumps(published)
    pulled = ContinualVLM.from_pretrained("org-c/composed")
    assert pulled.provenance["derm"]["origin"]["repo"] == "org-a/stages"
    assert_same(probs(pulled), probs(mine))


def test_base_named_by_hub_id_is_loaded_without_remote_code(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    import transformers

    from medadapt.backbones import save_backbone

    save_backbone(tiny_backbone("clip"), str(tmp_path / "base"))
    (tmp_path / "base" / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    HfApi().create_repo("org/tiny-base")
    HfApi().upload_folder(repo_id="org/tiny-base", folder_path=str(tmp_path / "base"))
    seen: list = []
    real = transformers.AutoConfig.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy))
    base_model = ContinualVLM.from_pretrained("org/tiny-base")  # a repo without manifest: a plain base
    assert base_model.backbone.source == "org/tiny-base" and len(base_model.backbone.revision) == 40
    sha = base_model.backbone.revision
    assert "modeling_evil.py" not in snapshot_files("org/tiny-base", sha)
    add_stage(base_model, "chest", 41)
    base_model.push_to_hub("org/on-hub-base")
    assert not any(p.startswith("base/") for p in fake_hub.files("org/on-hub-base"))
    manifest = json.loads(fake_hub.files("org/on-hub-base")[MANIFEST_NAME])
    assert (manifest["base"]["source"], manifest["base"]["revision"]) == ("org/tiny-base", sha)
    pulled = ContinualVLM.from_pretrained("org/on-hub-base")  # base fetched by id through transformers
    assert_same(probs(pulled), probs(base_model))
    assert seen and all(v is False for v in seen)


# -- offline -----------------------------------------------------------------------------------------
def test_offline_resolves_from_cache(monkeypatch, fake_hub, staged, tmp_path):  # noqa: F811
    _, oids, outputs = staged
    ContinualVLM.from_pretrained(REPO)  # fills the cache (and refs/main)
    ContinualVLM.from_pretrained(REPO, revision=oids[0])
    go_offline(monkeypatch, fake_hub)
    assert_same(probs(ContinualVLM.from_pretrained(REPO)), outputs[-1])
    pinned = ContinualVLM.from_pretrained(REPO, revision=oids[0])
    assert_same(probs(pinned), outputs[0])
    assert pinned.provenance["chest"]["revision"] == oids[0]
    # only the manifest of this revision is cached (the push read it): the error names repo, revision and file
    with pytest.raises(StageFileError, match=rf"{REPO}.*{oids[1]}.*'chest/adapter_config\.json' is missing in the local cache"):
        ContinualVLM.from_pretrained(REPO, revision=oids[1])
    # nothing cached at all
    with pytest.raises(StageFileError, match=rf"{REPO}.*{oids[1]}.*manifest\.json.*not in the local Hugging Face cache"):
        ContinualVLM.from_pretrained(REPO, revision=oids[1], cache_dir=tmp_path / "empty")


def test_offline_missing_file_names_repo_and_file(monkeypatch, fake_hub, staged):  # noqa: F811
    ContinualVLM(tiny_backbone("clip")).load_adapter(REPO, name="derm")  # caches manifest + derm only
    go_offline(monkeypatch, fake_hub)
    mine = ContinualVLM(tiny_backbone("clip"))
    mine.load_adapter(REPO, name="derm")  # fine offline
    with pytest.raises(StageFileError, match=r"medadapt-test/continual.*chest/adapter_config\.json") as err:
        ContinualVLM.from_pretrained(REPO)
    assert "offline" in str(err.value) and "derm/" not in str(err.value)  # names what is missing, only that
    with pytest.raises(StageFileError, match="local_files_only|offline"):
        ContinualVLM.from_pretrained("medadapt-test/never-seen")


def test_unknown_repo_and_revision(fake_hub, staged):  # noqa: F811
    with pytest.raises(StageFileError, match="not found"):
        ContinualVLM.from_pretrained("medadapt-test/nope")
    with pytest.raises(StageFileError, match="no revision 'v9'"):
        ContinualVLM.from_pretrained(REPO, revision="v9")
    fake_hub.put_file("medadapt-test/readme-only", "README.md", b"# hello\n")
    with pytest.raises(StageFileError, match="manifest.json"):
        ContinualVLM.from_pretrained("medadapt-test/readme-only")


# -- security ----------------------------------------------------------------------------------------
def test_tampered_file_is_refused(fake_hub, staged):  # noqa: F811
    _, oids, outputs = staged
    weights = load_file(_download(REPO, "chest/adapter_model.safetensors"))
    weights = {k: v + 1e-3 for k, v in weights.items()}
    fake = Path(constants.HF_HUB_CACHE).parent / "tampered.safetensors"
    save_file(weights, str(fake), metadata={"format": "pt"})
    fake_hub.put_file(REPO, "chest/adapter_model.safetensors", fake.read_bytes())
    with pytest.raises(StageFileError, match=r"sha256 mismatch for chest/adapter_model\.safetensors"):
        ContinualVLM.from_pretrained(REPO)
    target = ContinualVLM(tiny_backbone("clip"))
    with unchanged(target), pytest.raises(StageFileError, match="sha256 mismatch"):
        target.load_adapter(REPO, name="chest")
    assert_same(probs(ContinualVLM.from_pretrained(REPO, revision=oids[-1])), outputs[-1])  # pinned: untouched


def _download(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename)


def test_pickle_only_repos_are_refused(fake_hub):  # noqa: F811
    fake_hub.put_file("other/pickle-only", "pytorch_model.bin", b"\x80\x04K\x01.")
    with pytest.raises(StageFileError, match="pickle") as err:
        ContinualVLM.from_pretrained("other/pickle-only")
    assert "pytorch_model.bin" in str(err.value)
    fake_hub.put_file("other/pickled-base", "config.json", b'{"model_type": "clip"}')
    fake_hub.put_file("other/pickled-base", "pytorch_model.bin", b"\x80\x04K\x01.")
    with pytest.raises(StageFileError, match="safetensors"):
        ContinualVLM.from_pretrained("other/pickled-base")
    for repo in ("other/pickle-only", "other/pickled-base"):  # the pickles were never even downloaded
        cache = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        assert not list(cache.rglob("*.bin"))


def test_manifest_pointing_at_pickles_or_outside_the_repo_is_refused(fake_hub, staged):  # noqa: F811
    manifest = json.loads(fake_hub.files(REPO)[MANIFEST_NAME])
    pickled = json.loads(json.dumps(manifest))
    files = pickled["adapters"]["chest"]["files"]
    files["adapter_model.bin"] = files.pop("adapter_model.safetensors")
    fake_hub.put_file("evil/pickled", MANIFEST_NAME, json.dumps(pickled).encode())
    with pytest.raises(StageFileError, match="never loads pickled"):
        ContinualVLM.from_pretrained("evil/pickled")
    for path, where in (("../../etc/passwd", "adapters"), ("/etc", "adapters"), ("../outside", "base")):
        bad = json.loads(json.dumps(manifest))
        if where == "adapters":
            bad["adapters"]["chest"]["path"] = path
        else:
            bad["base"]["saved_in"] = path
        fake_hub.put_file("evil/traversal", MANIFEST_NAME, json.dumps(bad).encode())
        with pytest.raises(StageFileError, match="not a plain relative path"):
            ContinualVLM.from_pretrained("evil/traversal")
        target = ContinualVLM(tiny_backbone("clip"))
        with unchanged(target), pytest.raises(StageFileError, match="not a plain relative path"):
            target.load_adapter("evil/traversal", name="derm")


def test_token_never_written_or_logged(fake_hub, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    model = ContinualVLM(tiny_backbone("clip"))
    add_stage(model, "chest", 51)
    model.push_to_hub(REPO, token=TOKEN)
    pulled = ContinualVLM.from_pretrained(REPO, token=TOKEN)
    pulled.load_adapter(REPO, name="chest", as_name="chest2", token=TOKEN)
    pulled.save_pretrained(tmp_path / "save")
    assert caplog.records  # the push/pull did log
    assert TOKEN not in caplog.text
    for path, data in fake_hub.files(REPO).items():
        assert TOKEN.encode() not in data, path
    for path in (tmp_path / "save").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert all(TOKEN not in json.dumps(p) for p in pulled.provenance.values())


def test_base_from_a_local_folder_is_published_without_its_path(fake_hub, tmp_path):  # noqa: F811
    from medadapt.backbones import save_backbone

    folder = tmp_path / "private-models" / "my-clip"
    save_backbone(tiny_backbone("clip"), str(folder))
    model = ContinualVLM.from_base(str(folder))
    add_stage(model, "chest", 61)
    model.push_to_hub(REPO)
    assert model.backbone.source == str(folder)  # the model itself is left as it was
    files = fake_hub.files(REPO)
    assert "base/model.safetensors" in files
    assert not [p for p, data in files.items() if str(tmp_path).encode() in data]
    assert_same(probs(ContinualVLM.from_pretrained(REPO)), probs(model))


def test_domain_without_adapter_and_shared_adapter_round_trip(fake_hub):  # noqa: F811
    model = ContinualVLM(tiny_backbone("clip"))
    torch.manual_seed(71)
    model.add_shared_adapter("joint", lora())
    model.add_domain("chest", *STAGES["chest"], adapter="none")
    model.push_to_hub(REPO)
    assert fake_hub.commits(REPO)[-1]["title"] == "Add stages 1, 2/2: joint (lora), chest (no adapter)"
    pulled = ContinualVLM.from_pretrained(REPO)
    assert pulled.stage_order == ["joint", "chest"] and pulled.domains["chest"].adapter_type == "none"
    assert torch.equal(pulled.predict_proba(IMAGES, "chest", adapter="joint"), model.predict_proba(IMAGES, "chest", adapter="joint"))
