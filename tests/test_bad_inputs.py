"""Issue 13, section 5 (labels and names, training config, reserved names, environment): each bad
input ends in a clear medadapt error instead of a raw traceback or a silently wrong answer."""

from __future__ import annotations

import errno

import pytest

from medadapt import ContinualVLM, DomainError
from medadapt.errors import HubError, MedAdaptError, StorageError
from medadapt.tiny import tiny_backbone
from medadapt.training.config import ConfigError
from medadapt.training.trainer import ContinualTrainer, build_base

from .training_helpers import one_thread, tiny_config  # noqa: F401


@pytest.fixture(scope="module")
def empty():
    return ContinualVLM(tiny_backbone("clip"))


# -- labels and names ------------------------------------------------------------------------------
def test_labels_that_collide_after_tokenisation_are_refused(empty):
    limit = empty.backbone.text_max_length()
    common = "x" * (limit + 5)  # both prompts are cut before the labels differ
    with pytest.raises(DomainError, match=rf"labels '{common}a' and '{common}b' are the same text .* {limit} tokens"):
        empty.add_domain("long", [common + "a", common + "b"])
    assert "long" not in empty.domains and empty.stage_order == []
    empty.add_domain("short", ["x" * 10 + "a", "x" * 10 + "b"])  # differ within the limit: fine
    empty.remove_domain("short")


@pytest.mark.parametrize(
    "labels, message",
    [
        (["Normal", "normal"], r"duplicate labels \['Normal', 'normal'\]"),
        (["normal ", "normal"], r"duplicate labels \['normal', 'normal '\]"),
        (["a  b", "A b"], "duplicate labels"),
        ([None, "x"], "label 0 is None; every label must be a non-empty string"),
        (["x", "  "], "label 1 is empty"),
    ],
)
def test_labels_equal_up_to_case_or_spaces_or_missing_are_refused(empty, labels, message):
    with pytest.raises(DomainError, match=message):
        empty.add_domain("d", labels)
    with pytest.raises(ConfigError, match=message):
        tiny_config("/tmp/unused", overrides=[f"domains.0.labels={labels!r}".replace("None", "null")])


def test_overlong_and_reserved_domain_names(empty, tmp_path):
    with pytest.raises(DomainError, match="is 300 characters long; the limit is 100"):
        empty.add_domain("a" * 300, ["x", "y"])
    for reserved in ("checkpoints", "naive_baseline"):
        with pytest.raises(DomainError, match=f"name '{reserved}' is reserved"):
            empty.add_domain(reserved, ["x", "y"])
        with pytest.raises(ConfigError, match=f"name '{reserved}' is reserved"):
            tiny_config(tmp_path, overrides=[f"domains.0.name={reserved}"])
    with pytest.raises(ConfigError, match="300 characters long"):
        tiny_config(tmp_path, overrides=["domains.0.name=" + "a" * 300])


# -- training config -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", r"seed must be in \[0, 2\*\*32\), got -1"),
        ("train.lr=.nan", "train.lr must be > 0 and finite, got nan"),
        ("train.lr=.inf", "train.lr must be > 0 and finite, got inf"),
        ("train.weight_decay=-1", "train.weight_decay must be >= 0 and finite, got -1"),
        ("adapter.alpha=0", "adapter.alpha must be > 0"),
        ("adapter.dropout=-0.5", r"adapter.dropout must be in \[0, 1\), got -0.5"),
        ("train.max_steps_per_stage=0", "train.max_steps_per_stage must be >= 1"),
    ],
)
def test_bad_training_numbers_are_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, overrides=[override])


def test_a_model_name_typo_says_what_it_is_not(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: set it too, so no network retries
    config = tiny_config(tmp_path, overrides=["model=tiny-clp"])
    with pytest.raises(ConfigError, match=r"model 'tiny-clp' is neither a built-in name .* nor a local folder, and the Hugging Face Hub could not provide it .*Did you mean 'tiny-clip'\?"):
        build_base(config)


# -- environment -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_disk_full_while_training_is_a_clear_error(tmp_path, monkeypatch, one_thread, kind):  # noqa: F811
    from safetensors import SafetensorError

    import medadapt.training.checkpoint as checkpoint

    def full(*args, **kwargs):
        if kind == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(StorageError, match="cannot write a checkpoint into .*checkpoints.*(disk is full|disk is probably full)") as info:
        ContinualTrainer(tiny_config(tmp_path / "run", n_domains=1, n_train=24, n_test=12), progress=False).run()
    assert isinstance(info.value, MedAdaptError)


def test_push_to_hub_in_offline_mode_is_a_clear_error(monkeypatch):
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("cxr", ["a", "b"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="push_to_hub needs the network, but Hugging Face Hub offline mode is on"):
        model.push_to_hub("someone/stages")
