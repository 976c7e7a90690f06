"""Drive the real ``huggingface_hub`` client against ``tests.hub_server.FakeHub``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HfHubHTTPError

from tests.hub_server import TOKEN, FakeHub, git_blob_sha
from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)

REPO = "medadapt-test/adapter-repo"


def _write(folder, files: dict[str, bytes]):
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


@pytest.fixture
def pushed(fake_hub, tmp_path):  # noqa: F811
    """Two ``upload_folder`` commits: stage 1 (config + weights), stage 2 adds a second adapter."""
    api = HfApi(endpoint=fake_hub.endpoint, token=TOKEN)
    url = api.create_repo(REPO)
    assert url.repo_id == REPO
    folder = _write(tmp_path / "out", {"adapter_config.json": b'{"r": 8}', "stage1/weights.bin": b"\x00" * 64})
    first = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="stage 1")
    _write(folder, {"stage2/weights.bin": b"\x01" * 32, "README.md": b"---\nlicense: apache-2.0\n---\n# card\n"})
    second = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="stage 2")
    return api, first.oid, second.oid


def test_fixture_patches_client(fake_hub):  # noqa: F811
    assert constants.ENDPOINT == fake_hub.endpoint == os.environ["HF_ENDPOINT"]
    assert constants.HF_HUB_CACHE.startswith(os.environ["HF_HOME"])
    assert constants.HF_HUB_OFFLINE is False and constants.HF_HUB_DISABLE_XET is True
    assert HfApi().whoami()["name"] == "testuser"


def test_create_repo_conflict_and_exist_ok(fake_hub):  # noqa: F811
    api = HfApi(endpoint=fake_hub.endpoint, token=TOKEN)
    api.create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.repo_exists(REPO) and not api.repo_exists("medadapt-test/nope")
    # the real Hub starts every repo with an "initial commit" holding .gitattributes
    assert fake_hub.uploaded_paths(REPO) == [[".gitattributes"]]


def test_two_commits_only_upload_new_files(fake_hub, pushed):  # noqa: F811
    api, first, second = pushed
    history = fake_hub.commits(REPO)  # oldest first
    assert [c["title"] for c in history] == ["initial commit", "stage 1", "stage 2"]
    assert [c["oid"] for c in history[1:]] == [first, second]
    assert fake_hub.uploaded_paths(REPO)[1:] == [
        ["adapter_config.json", "stage1/weights.bin"],
        ["README.md", "stage2/weights.bin"],  # unchanged stage-1 files were not re-uploaded
    ]
    listed = api.list_repo_commits(REPO)  # newest first, like the real Hub
    assert [c.commit_id for c in listed] == [second, first, history[0]["oid"]]
    assert listed[0].title == "stage 2"
    assert api.model_info(REPO).sha == second
    assert {s.rfilename for s in api.model_info(REPO, revision=first).siblings} == {
        ".gitattributes", "adapter_config.json", "stage1/weights.bin"}
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert tree["stage2/weights.bin"].size == 32
    assert tree["stage2/weights.bin"].blob_id == git_blob_sha(b"\x01" * 32)
    assert {f.path for f in api.list_repo_tree(REPO)} == {
        ".gitattributes", "README.md", "adapter_config.json", "stage1", "stage2"}
    assert [f.path for f in api.list_repo_tree(REPO, path_in_repo="stage1")] == ["stage1/weights.bin"]


def test_downloads_by_revision_and_snapshot(fake_hub, pushed):  # noqa: F811
    _, first, second = pushed
    path = hf_hub_download(REPO, "adapter_config.json", revision=first)
    assert Path(path).read_bytes() == b'{"r": 8}'
    assert first in path  # cached under snapshots/<first sha>
    path = hf_hub_download(REPO, "stage2/weights.bin")
    assert Path(path).read_bytes() == b"\x01" * 32 and second in path
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "stage2/weights.bin", revision=first)

    snap = snapshot_download(REPO, revision=first, allow_patterns=["*.json", "stage*/*"])
    got = sorted(os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs)
    assert got == ["adapter_config.json", "stage1/weights.bin"]


def test_offline_mode_resolves_from_cache(fake_hub, pushed, monkeypatch):  # noqa: F811
    _, _, second = pushed
    online = hf_hub_download(REPO, "adapter_config.json")
    snapshot_download(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n_requests = len(fake_hub.request_log)
    assert hf_hub_download(REPO, "adapter_config.json") == online
    assert snapshot_download(REPO).endswith(second)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "never-downloaded.txt")
    assert len(fake_hub.request_log) == n_requests  # nothing reached the server


def test_errors_map_to_client_exceptions(fake_hub, pushed):  # noqa: F811
    api, _, _ = pushed
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.safetensors")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("medadapt-test/does-not-exist", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "adapter_config.json", revision="no-such-branch")
    assert api.file_exists(REPO, "README.md") and not api.file_exists(REPO, "missing.txt")


def test_branches_tags_and_planted_files(fake_hub, pushed, tmp_path):  # noqa: F811
    api, first, second = pushed
    api.create_branch(REPO, branch="stage-1", revision=first)
    api.create_tag(REPO, tag="v1", revision=first)
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second, "stage-1": first}
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first)]
    info = api.upload_file(path_or_fileobj=b"x", path_in_repo="extra.txt", repo_id=REPO, revision="stage-1",
                           commit_message="on branch")
    assert fake_hub.commits(REPO, revision="stage-1")[-2]["oid"] == first
    assert fake_hub.files(REPO, revision=info.oid)["extra.txt"] == b"x"
    assert "extra.txt" not in fake_hub.files(REPO)
    # a commit to a branch that does not exist yet starts from main
    api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=REPO, revision="fresh")
    assert "stage2/weights.bin" in fake_hub.files(REPO, revision="fresh")

    # planting a tampered file bypasses the client entirely
    oid = fake_hub.put_file(REPO, "adapter_config.json", b"tampered")
    assert fake_hub.commits(REPO)[-1]["paths"] == ["adapter_config.json"]
    assert Path(hf_hub_download(REPO, "adapter_config.json")).read_bytes() == b"tampered"
    assert api.model_info(REPO).sha == oid
    fake_hub.put_file("other/pickle-only", "pytorch_model.bin", b"PK\x03\x04")
    assert api.list_repo_files("other/pickle-only") == [".gitattributes", "pytorch_model.bin"]
    # deletions
    api.delete_file("y.txt", repo_id=REPO, revision="fresh")
    assert "y.txt" not in fake_hub.files(REPO, revision="fresh")
    api.delete_folder("stage1", repo_id=REPO)
    assert not any(p.startswith("stage1/") for p in fake_hub.files(REPO))


def test_dataset_repos(fake_hub, tmp_path):  # noqa: F811
    api = HfApi(endpoint=fake_hub.endpoint, token=TOKEN)
    api.create_repo("medadapt-test/rehearsal", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv",
                    repo_id="medadapt-test/rehearsal", repo_type="dataset")
    assert api.dataset_info("medadapt-test/rehearsal").siblings[-1].rfilename == "data/train.csv"
    path = hf_hub_download("medadapt-test/rehearsal", "data/train.csv", repo_type="dataset")
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    assert fake_hub.uploaded_paths("medadapt-test/rehearsal", repo_type="dataset")[-1] == ["data/train.csv"]


def test_standalone_context_manager():
    with FakeHub() as hub:
        hub.put_file("a/b", "f.txt", b"hello")
        assert hub.files("a/b")["f.txt"] == b"hello"
        assert hub.endpoint.startswith("http://127.0.0.1:")
    assert hub._server is None
