"""Run configuration: YAML + key=value overrides, unknown keys (listing the valid ones), type errors."""

from __future__ import annotations

import pytest

from medadapt.errors import MedAdaptError
from medadapt.training.config import ConfigError, RunConfig, load_config, parse_overrides

from .training_helpers import RECIPES, tiny_run, write_yaml

DEMO = RECIPES / "configs" / "demo.yaml"


def test_demo_config_loads_with_defaults_filled():
    cfg = load_config(DEMO)
    assert isinstance(cfg, RunConfig)
    assert cfg.model == "tiny-clip" and cfg.paradigm == "rehearsal" and cfg.compare_naive is True
    assert [d.name for d in cfg.domains] == ["pneumonia", "breast", "organ"]
    assert {d.data["path"] for d in cfg.domains} == {"medadapt:demo/medical_demo.npz"}  # shipped in the package
    assert cfg.train.grad_accum_steps is None and cfg.train.mixed_precision is None  # defaults: accelerate decides
    assert cfg.rehearsal.policy == "class_balanced" and cfg.rehearsal.ratio == 0.5
    synthetic = load_config(RECIPES / "configs" / "synthetic.yaml")
    assert [d.name for d in synthetic.domains] == ["synth_histology", "synth_xray", "synth_ultrasound"]


def test_parse_overrides_nests_and_parses_yaml_values():
    assert parse_overrides(["train.epochs=3", "train.lr=0.001", "compare_naive=false", "adapter.target_modules=[q_proj, v_proj]", "tracking.log_with="]) == {
        "train": {"epochs": 3, "lr": 1e-3},
        "compare_naive": False,
        "adapter": {"target_modules": ["q_proj", "v_proj"]},
        "tracking": {"log_with": None},
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])


def test_overrides_apply_on_top_of_the_yaml(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    cfg = load_config(path, ["train.epochs=3", "rehearsal.policy=reservoir", "paradigm=joint", "seed=7", "train.lr=0.01"])
    assert (cfg.train.epochs, cfg.rehearsal.policy, cfg.paradigm, cfg.seed) == (3, "reservoir", "joint", 7)
    assert cfg.train.batch_size == 8  # untouched keys keep the file's value
    assert cfg.train.lr == pytest.approx(0.01) and isinstance(cfg.train.lr, float)
    # an int where a float is expected is fine (lr=1 -> 1.0), and so is 1e-3 (a string to YAML 1.1)
    assert load_config(path, ["train.lr=1"]).train.lr == 1.0
    assert load_config(path, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)
    assert load_config(path, ["rehearsal.ratio=2.5e-1"]).rehearsal.ratio == pytest.approx(0.25)


def test_overrides_reach_into_the_domain_list_by_index_or_name(tmp_path):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    cfg = load_config(path, ["domains.0.data.synthetic.n_train=12", "domains.us.prompt=an ultrasound of {}", "domains.-1.labels=[a, b, c]"])
    assert cfg.domains[0].data["synthetic"] == {"kind": "xray", "n_train": 12, "n_test": 30, "size": 16}
    assert cfg.domains[1].prompt == "an ultrasound of {}"
    assert cfg.domains[1].labels == ["a", "b", "c"]
    with pytest.raises(ConfigError, match=r"no item 'nope' in domains.*\['xr', 'us'\]"):
        load_config(path, ["domains.nope.prompt={}"])


@pytest.mark.parametrize(
    "override, where, valid",
    [
        ("train.epoch=2", "train.epoch", "epochs"),
        ("rehersal.size=3", "rehersal", "rehearsal"),
        ("adapter.rank=4", "adapter.rank", "target_modules"),
        ("domains.0.lables=[x]", "domains[0].lables", "labels"),
    ],
)
def test_unknown_key_is_an_error_listing_the_valid_keys(tmp_path, override, where, valid):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    message = str(info.value)
    assert where in message and "valid keys" in message and valid in message
    assert isinstance(info.value, MedAdaptError)


def test_unknown_key_in_the_yaml_file_is_an_error_too(tmp_path):
    data = tiny_run(tmp_path / "out")
    data["train"]["epocs"] = 3
    with pytest.raises(ConfigError, match=r"train.epocs.*valid keys.*epochs"):
        load_config(write_yaml(tmp_path / "run.yaml", data))


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.epochs=two", r"train.epochs must be int, got str"),
        ("train.epochs=2.5", r"train.epochs must be an integer, got 2.5"),
        ("train.epochs=true", r"train.epochs must be int, got bool"),
        ("train.lr=fast", r"train.lr must be float, got str"),
        ("compare_naive=1", r"compare_naive must be bool, got int"),
        ("adapter.target_modules=3", r"adapter.target_modules must be a list"),
        ("train=3", r"train. must be a mapping|train must be a mapping"),
        ("domains=abc", r"domains must be a list of domains"),
    ],
)
def test_wrong_types_are_clear_errors(tmp_path, override, match):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    with pytest.raises(ConfigError, match=match):
        load_config(path, [override])


def test_target_modules_may_be_one_regex_string(tmp_path):
    """A string is a regex over full module paths (how a generative config targets the language model and
    the projector but not the image tower, whose layers share the names q_proj/v_proj)."""
    regex = r"^model\.(language_model\..*\.(q_proj|v_proj)|multi_modal_projector\.linear_[12])$"
    path = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    config = load_config(path, [f"adapter.target_modules='{regex}'"])
    assert config.adapter.target_modules == regex
    assert config.adapter.build(["q_proj"]).target_modules == regex
    assert load_config(path, ["adapter.target_modules=[q_proj, v_proj]"]).adapter.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "override, match",
    [
        ("paradigm=lifelong", r"paradigm 'lifelong' unknown; valid: \['specialized', 'joint', 'continual', 'rehearsal'\]"),
        ("rehearsal.policy=fifo", r"rehearsal.policy 'fifo' unknown; valid"),
        ("rehearsal.ratio=1.0", r"rehearsal.ratio must be in \[0, 1\)"),
        ("rehearsal.size=-1", r"rehearsal.size must be >= 0"),
        ("train.batch_size=0", r"train.batch_size must be >= 1"),
        ("train.lr=0", r"train.lr must be > 0"),
        ("train.mixed_precision=fp8", r"mixed_precision must be no, fp16, bf16 or empty"),
        ("adapter.type=ia3", r"adapter.type must be 'head' or 'lora' or 'prompt'"),
        ("tracking.log_with=nonsense", r"tracking.log_with 'nonsense' unknown; valid"),
        ("domains.0.prompt=no placeholder", r"prompt must contain one '\{\}'"),
        ("domains.1.name=xr", r"domain names must be unique"),
        ("domains.0.data.format=parquet", r"domain 'xr' data: unknown data format 'parquet'"),
        ("domains.0.data.synthetic.n_trian=5", r"unknown synthetic option\(s\) \['n_trian'\]"),
        ("domains=[]", r"no domains"),
    ],
)
def test_invalid_values_are_clear_errors(tmp_path, override, match):
    path = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out"))
    with pytest.raises(ConfigError, match=match):
        load_config(path, [override])


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listing)


def test_round_trip_and_fingerprint(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out")))
    again = load_config(None, defaults=cfg.to_dict())
    assert again == cfg
    assert again.fingerprint() == cfg.fingerprint()
    moved = load_config(None, [f"output_dir={tmp_path / 'elsewhere'}", "tracking.project=x"], defaults=cfg.to_dict())
    assert moved.fingerprint() == cfg.fingerprint()  # where results go and how they are tracked do not change them
    assert load_config(None, ["train.epochs=2"], defaults=cfg.to_dict()).fingerprint() != cfg.fingerprint()


def test_head_init_changes_the_fingerprint_of_head_runs_only(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out")))
    assert cfg.adapter.type != "head"
    other_init = load_config(None, ["adapter.head_init=zero"], defaults=cfg.to_dict())
    assert other_init.fingerprint() == cfg.fingerprint()  # a LoRA run from before head_init existed still resumes
    head = load_config(None, ["adapter.type=head", "paradigm=specialized"], defaults=cfg.to_dict())
    assert load_config(None, ["adapter.head_init=zero"], defaults=head.to_dict()).fingerprint() != head.fingerprint()
