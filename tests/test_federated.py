"""Federated continual adapters (issue 17), through Flower's Message API with every site in-process.

Sites are medadapt's real ``ClientApp`` (with its DP mod) behind :class:`LocalGrid`; the server is
the ``ServerApp``'s :class:`FederatedServer`. Tiny model, synthetic data: each run takes seconds.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from medadapt import ConfigError, ContinualVLM, FederationError, MissingExtraError  # noqa: E402
from medadapt.federated import dirichlet_partition, federated_config_from_dict  # noqa: E402
from medadapt.federated.aggregation import weighted_mean  # noqa: E402
from medadapt.federated.screening import SiteUpdate  # noqa: E402

pytestmark = pytest.mark.usefixtures("core_single_thread")


def _domain(name: str, kind: str, labels: list[str], n_train: int = 60) -> dict[str, Any]:
    return {"name": name, "labels": labels, "prompt": "an image of {}.",
            "data": {"format": "synthetic", "synthetic": {"kind": kind, "n_train": n_train, "n_test": 30, "size": 32}, "seed": 0}}


def tiny_config(out: Path, aggregation: str = "fedavg", sites: int = 3, rounds: int = 2, domains: int = 2, **fed: Any) -> dict[str, Any]:
    """Two synthetic domains; the first split over ``sites`` sites, the second held by the first site."""
    doms = [_domain("xray", "xray", ["normal", "pneumonia", "effusion"], 30 * sites), _domain("us", "ultrasound", ["normal", "benign lesion"])][:domains]
    site_list = []
    for i in range(sites):
        data: dict[str, Any] = {"xray": {"partition": {"num": sites, "index": i, "alpha": 1.0, "seed": 0}}}
        if i == 0 and domains > 1:
            data["us"] = {}
        site_list.append({"name": f"hospital-{i}", "data": data})
    return {
        "model": "tiny-clip", "paradigm": "rehearsal", "seed": 0, "output_dir": str(out),
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "rehearsal": {"size": 16, "policy": "reservoir", "ratio": 0.5},
        "train": {"batch_size": 16, "lr": 0.005},
        "domains": doms,
        "federation": {"rounds_per_stage": rounds, "local_epochs": 1, "aggregation": aggregation, "min_sites": 2, "sites": site_list, **fed},
    }


def simulate(cfg: dict[str, Any], mods: dict[str, list[Any]] | None = None, grid: Any = None) -> dict[str, Any]:
    from medadapt.federated.simulation import run_simulation

    return run_simulation(federated_config_from_dict(cfg), mods=mods, grid=grid)


class Recorder:
    """A Flower mod that keeps every reply a site sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def __call__(self, msg: Any, ctx: Any, call_next: Any) -> Any:
        reply = call_next(msg, ctx)
        self.sent.append((msg.metadata.message_type, reply))
        return reply


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["federation"]["sites"][0]["data"].pop("us"), "no site holds domain(s) ['us']"),
        (lambda c: c["federation"]["sites"].append(copy.deepcopy(c["federation"]["sites"][1])), "more than once"),
        (lambda c: c["federation"].update(aggregation="fedprox-lora"), "aggregation 'fedprox-lora' unknown"),
        (lambda c: c["federation"].update(min_sites=4), "fewer than federation.min_sites=4"),
        (lambda c: c["federation"]["sites"][1]["data"].update(brain={}), "not in domains"),
        (lambda c: c["federation"]["sites"][1]["data"]["xray"].update(partition={"num": 3, "index": 3}), "partition.index"),
    ],
)
def test_bad_federation_blocks_are_clear_errors_before_training(tmp_path: Path, change: Any, message: str) -> None:
    cfg = tiny_config(tmp_path / "run")
    change(cfg)
    with pytest.raises(ConfigError, match=None) as info:
        federated_config_from_dict(cfg)
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()


def test_missing_flwr_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from medadapt.federated import extra

    real = importlib.util.find_spec
    monkeypatch.setattr(extra.importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r'pip install "medadapt\[federated\]"'):
        extra.require_flwr()


def test_the_recipes_flower_app_is_the_one_the_package_ships() -> None:
    from medadapt.federated.loopback import APP_DIR

    app = Path(__file__).resolve().parent.parent / "recipes" / "federated_app" / "pyproject.toml"
    assert app.resolve() == (APP_DIR / "pyproject.toml").resolve()
    text = app.read_text()
    assert 'serverapp = "medadapt.federated.server_app:app"' in text and 'clientapp = "medadapt.federated.client_app:app"' in text


def test_loopback_writes_one_effective_config_for_the_server_and_every_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from medadapt.federated import load_federated_config
    from medadapt.federated.loopback import LoopbackFederation, flower_tool

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(Path("runs/fed"), domains=1)
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    overrides = ["federation.aggregation=exact", "federation.privacy.secure_aggregation=true", "domains.xray.data.seed=3"]
    fed = LoopbackFederation("fed.yaml", overrides)  # nothing starts before start()
    assert fed.workdir == tmp_path / "runs" / "fed.loopback" and not fed.processes
    written = yaml.safe_load(fed.config_path.read_text())
    assert written["output_dir"] == str(tmp_path / "runs" / "fed")  # absolute: the ServerApp runs elsewhere
    assert written["federation"]["aggregation"] == "exact" and written["federation"]["privacy"]["secure_aggregation"] is True
    assert isinstance(written["domains"], list) and written["domains"][0]["data"]["seed"] == 3  # a list item picked by name, as in a run
    assert load_federated_config(fed.config_path).fingerprint() == load_federated_config("fed.yaml", overrides).fingerprint()  # sites and server agree
    assert f'address = "127.0.0.1:{fed.control}"' in (fed.workdir / "flwr-home" / "config.toml").read_text()
    assert fed.sites == ["hospital-0", "hospital-1", "hospital-2"] and len(set(fed.site_ports + [fed.control])) == 4
    with pytest.raises(FederationError, match="medadapt\\[federated\\]"):
        flower_tool("flower-no-such-command")
    with pytest.raises(ConfigError, match="unknown"):
        LoopbackFederation("fed.yaml", ["federation.aggregation=fedprox"])


def test_yaml_block_of_the_issue_loads(tmp_path: Path) -> None:
    from medadapt.federated import load_federated_config

    cfg = tiny_config(tmp_path / "run")
    path = tmp_path / "fed.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    loaded = load_federated_config(path, ["federation.rounds_per_stage=5", "federation.aggregation=exact", "train.lr=0.01"])
    assert loaded.federation.rounds_per_stage == 5 and loaded.federation.aggregation == "ffa_lora" and loaded.run.train.lr == 0.01
    assert loaded.federation.holders("xray") == ["hospital-0", "hospital-1", "hospital-2"] and loaded.federation.holders("us") == ["hospital-0"]
    recipe = load_federated_config(Path(__file__).parent.parent / "recipes" / "configs" / "federated.yaml")
    assert [s.name for s in recipe.federation.sites] == ["site-a", "site-b", "site-c"]


# -- pieces -------------------------------------------------------------------------------------------
def test_dirichlet_partition_is_disjoint_complete_deterministic_and_skewed() -> None:
    labels = np.repeat([0, 1], [300, 300])
    parts = dirichlet_partition(labels, 3, 0.5, 0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(600))
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert [p.tolist() for p in parts] == [p.tolist() for p in dirichlet_partition(labels, 3, 0.5, 0)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in dirichlet_partition(labels, 3, 0.5, 1)]
    shares = [labels[p].mean() for p in parts]
    assert max(shares) - min(shares) > 0.2  # label skew: alpha 0.5 gives sites different class mixes


def test_ffa_lora_average_is_the_exact_average_update_and_fedavg_is_not() -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 16)).astype(np.float32)
    sites = [(rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32), n) for n in (10, 30, 60)]
    # ffa_lora: A frozen and shared, only B travels
    ffa = [SiteUpdate(f"s{i}", i, {"a/lora_B": B}, {"a": n}, "x") for i, (B, _, n) in enumerate(sites)]
    mean_b = weighted_mean(ffa, {"a/lora_B": np.zeros((16, 4), np.float32)})[0]["a/lora_B"]
    exact = sum(n * (B @ A) for B, _, n in sites) / 100
    np.testing.assert_allclose(mean_b @ A, exact, rtol=1e-4, atol=1e-5)
    # fedavg: A and B averaged separately; mean(B)·mean(A) is not the mean of B·A
    fed = [SiteUpdate(f"s{i}", i, {"a/lora_A": Ak, "a/lora_B": B}, {"a": n}, "x") for i, (B, Ak, n) in enumerate(sites)]
    avg = weighted_mean(fed, {"a/lora_A": A, "a/lora_B": np.zeros((16, 4), np.float32)})[0]
    true = sum(n * (B @ Ak) for B, Ak, n in sites) / 100
    assert np.abs(avg["a/lora_B"] @ avg["a/lora_A"] - true).max() > 0.1


# -- a run -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Recorder], Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fed") / "run"
    cfg = tiny_config(out)
    recorders = {f"hospital-{i}": Recorder() for i in range(3)}
    results = simulate(cfg, mods={k: [r] for k, r in recorders.items()})
    return results, recorders, out, cfg


def test_only_allowed_adapter_tensors_leave_a_site(recorded_run: Any) -> None:
    from medadapt.federated.model_setup import build_federated_model
    from medadapt.federated.payload import allowed_names

    results, recorders, out, cfg = recorded_run
    model, plan = build_federated_model(federated_config_from_dict(cfg).run)
    stage_names = {name: shape for stage in plan.stages for name, shape in allowed_names(model, [p.adapter for p in stage.phases], "fedavg").items()}
    every = allowed_names(model, model.adapter_names(), "fedavg", everything=True)
    counted = 0
    for site, recorder in recorders.items():
        assert recorder.sent, f"{site} sent nothing"
        for kind, reply in recorder.sent:
            assert not reply.has_error(), reply.error
            content = reply.content
            for key, record in content.array_records.items():
                assert key == "adapters" and kind == "train"
                for name, array in record.items():
                    assert name in stage_names and tuple(array.shape) == stage_names[name], name
                    assert name in every
                    counted += 1
            for key, record in content.metric_records.items():
                assert key == "metrics"
                allowed = {"num-examples", "train-loss"} | {f"num-examples.{a}" for a in model.adapter_names()} if kind == "train" else None
                for name in record:
                    if allowed is not None:
                        assert name in allowed, name
                    else:  # evaluation: aggregate metrics per view and domain only
                        view, domain, metric = name.split("|")
                        assert domain in model.domains and metric in {"accuracy", "auroc", "balanced_accuracy", "n", "loss", "ece", "macro_f1"} or metric.isidentifier()
            for key, record in content.config_records.items():
                assert (key, kind) in {("site", "train"), ("site", "query")}
                assert set(record) <= {"base", "site", "config", "domains"}
    assert counted > 0
    # the rehearsal memory is on each site's disk, and nothing of it was in any reply
    for i in range(3):
        from medadapt.rehearsal import RehearsalBuffer

        memory = json.loads((out.parent / "run.sites" / f"hospital-{i}" / "memory.json").read_text())
        buffer = RehearsalBuffer.from_state_dict(memory["buffer"])
        assert len(buffer) > 0 and buffer.domains() == ["xray"] and memory["memorised"] == [0]


def test_run_writes_a_normal_medadapt_save_with_provenance_and_no_data_paths(recorded_run: Any) -> None:
    from peft import PeftModel

    from medadapt.tiny import tiny_base

    results, _, out, cfg = recorded_run
    for name in ("results.json", "report.md", "accuracy_matrix.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert len(results["accuracy_matrix"]) == 2 and results["federation"]["completed_rounds"] == 4
    model = ContinualVLM.from_pretrained(out)
    assert model.adapter_names() == ["xray", "us", "shared"]
    prov = model.provenance["shared"]["federated"]
    assert prov["aggregation"] == "fedavg" and prov["rounds"] == 2 and set(prov["samples_per_site"]) <= {"site-1", "site-2", "site-3"}
    assert sum(prov["samples_per_site"].values()) > 0
    peft_model = PeftModel.from_pretrained(tiny_base("tiny-clip", seed=0).model, out / "shared")
    assert any("lora_B" in n for n, _ in peft_model.named_parameters())
    texts = (out / "results.json").read_text() + (out / "manifest.json").read_text()
    assert "hospital-" not in texts  # site names are not public by default
    assert all("data" not in d for d in json.loads((out / "results.json").read_text())["config"]["domains"])


def test_memory_and_training_are_local_a_site_with_memory_trains_shared_on_replay(recorded_run: Any) -> None:
    results, _, _, _ = recorded_run
    second_stage = [r for r in results["federation"]["rounds"] if r["stage"] == 1]
    for r in second_stage:
        # hospital-1 and -2 hold no `us` data: they train only the shared adapter, on their own memory
        assert r["samples"]["site-2"]["us"] == 0 and r["samples"]["site-2"]["shared"] > 0
        assert r["samples"]["site-1"]["us"] > 0


def test_ffa_lora_sends_only_b_and_keeps_a_frozen(tmp_path: Path) -> None:
    recorder = Recorder()
    results = simulate(tiny_config(tmp_path / "run", aggregation="ffa_lora", domains=1, rounds=1), mods={"hospital-0": [recorder]})
    names = [n for kind, reply in recorder.sent if kind == "train" for n in reply.content.array_records["adapters"]]
    assert names and all(".lora_B." in n for n in names)
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    from medadapt.federated.model_setup import build_federated_model

    fresh, _ = build_federated_model(federated_config_from_dict(tiny_config(tmp_path / "x", domains=1)).run)
    for key, tensor in model.adapter_state_dict("shared").items():
        if ".lora_A." in key:
            assert np.array_equal(tensor.numpy(), fresh.adapter_state_dict("shared")[key].numpy())
    assert results["federation"]["bytes_up_per_site_round"] > 0


# -- faults -------------------------------------------------------------------------------------------
class Poison:
    """Replaces this site's train reply with a broken one, a different kind each round."""

    KINDS = ("nan", "name", "shape", "norm", "base")

    def __init__(self) -> None:
        self.round = 0

    def __call__(self, msg: Any, ctx: Any, call_next: Any) -> Any:
        from medadapt.federated.messages import parse_train_reply, train_reply

        reply = call_next(msg, ctx)
        if msg.metadata.message_type != "train":
            return reply
        kind = self.KINDS[self.round % len(self.KINDS)]
        self.round += 1
        tensors, counts, loss, base = parse_train_reply(reply.content)
        first = next(iter(tensors))
        if kind == "nan":
            tensors[first] = tensors[first].copy()
            tensors[first].flat[0] = np.nan
        elif kind == "name":
            tensors["shared/base_model.model.vision_model.embeddings.patch_embedding.weight"] = np.zeros(3, np.float32)
        elif kind == "shape":
            tensors[first] = np.zeros((2, 2), np.float32)
        elif kind == "norm":
            tensors = {k: v + 1000.0 for k, v in tensors.items()}
        elif kind == "base":
            base = "0" * 32
        from flwr.app import Message

        return Message(train_reply(tensors, counts, loss, base), reply_to=msg)


def test_poisoned_updates_are_dropped_logged_and_never_averaged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(tmp_path / "run", domains=1, rounds=len(Poison.KINDS))
    with caplog.at_level(logging.ERROR):
        results = simulate(cfg, mods={"hospital-2": [Poison()]})
    rounds = results["federation"]["rounds"]
    assert len(rounds) == len(Poison.KINDS)
    reasons = []
    for r in rounds:
        assert r["sites"] == ["site-1", "site-2"]
        assert [d["site"] for d in r["dropped"]] == ["site-3"]
        reasons.append(r["dropped"][0]["reason"])
    assert "NaN or inf" in reasons[0] and "names differ" in reasons[1] and "shape" in reasons[2]
    assert "median" in reasons[3] and "base fingerprint" in reasons[4]
    assert "dropped" in caplog.text
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    assert all(np.isfinite(t.numpy()).all() and np.abs(t.numpy()).max() < 100 for t in model.adapter_state_dict("shared").values())


@pytest.mark.parametrize("privacy", [{}, {"secure_aggregation": True}], ids=["plain", "secagg"])
def test_a_site_with_another_base_refuses_with_a_clear_message(tmp_path: Path, caplog: pytest.LogCaptureFixture, privacy: dict[str, Any]) -> None:
    from medadapt.federated import client_app

    def other_base(msg: Any, ctx: Any, call_next: Any) -> Any:
        client_app.site_runtime(ctx).base = "f" * 32  # this hospital loaded different base weights
        return call_next(msg, ctx)

    with caplog.at_level(logging.ERROR):
        results = simulate(tiny_config(tmp_path / "run", domains=1, rounds=1, privacy=privacy), mods={"hospital-1": [other_base]})
    assert "refuses the round: the server's base model" in caplog.text
    assert results["federation"]["rounds"][0]["sites"] == ["site-1", "site-3"]


def test_missing_data_at_one_site_is_reported_and_the_run_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(tmp_path / "run", domains=1, rounds=1)
    cfg["federation"]["sites"][2]["data"]["xray"].update(format="npz", path=str(tmp_path / "absent.npz"))
    with caplog.at_level(logging.ERROR):
        results = simulate(cfg)
    assert "cannot load its data of domain 'xray'" in caplog.text
    assert results["federation"]["rounds"][0]["sites"] == ["site-1", "site-2"]
    assert "absent.npz" not in (tmp_path / "run" / "results.json").read_text()  # a site's data path is never recorded
    cfg["federation"]["min_sites"] = 3
    cfg["output_dir"] = str(tmp_path / "run3")
    with pytest.raises(FederationError, match="min_sites is 3"):
        simulate({**cfg, "federation": {**cfg["federation"], "round_timeout_s": 0.5}})


def _on_train_rounds(grid: Any, before: Any) -> None:
    """Call ``before(n)`` as the grid is about to send the n-th batch of train messages (n from 1)."""
    real, sent = grid.push_messages, []

    def push(messages: Any) -> Any:
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            sent.append(1)
            before(len(sent))
        return real(messages)

    grid.push_messages = push


def test_a_site_that_dies_mid_run_is_left_out_and_recorded(tmp_path: Path) -> None:
    from medadapt.federated.simulation import simulation_grid

    grid = simulation_grid(federated_config_from_dict(tiny_config(tmp_path / "run", domains=1, rounds=3)))

    def kill(n: int) -> None:
        if n == 2:
            grid.dead.add(max(grid.nodes))  # hospital-2's node dies as round 2 starts

    _on_train_rounds(grid, kill)
    results = simulate(tiny_config(tmp_path / "run", domains=1, rounds=3), grid=grid)
    rounds = results["federation"]["rounds"]
    assert rounds[0]["sites"] == ["site-1", "site-2", "site-3"]
    assert rounds[1]["sites"] == ["site-1", "site-2"] and rounds[1]["failed"] == [{"site": "site-3", "error": "no reply"}]
    assert rounds[2]["sites"] == ["site-1", "site-2"]


def test_a_restarted_server_resumes_after_the_last_completed_round(tmp_path: Path) -> None:
    from medadapt.federated.simulation import simulation_grid

    cfg_dict = tiny_config(tmp_path / "run", rounds=2)
    grid = simulation_grid(federated_config_from_dict(cfg_dict))

    def crash(n: int) -> None:
        if n == 3:
            raise KeyboardInterrupt("server killed")

    _on_train_rounds(grid, crash)
    with pytest.raises(KeyboardInterrupt):
        simulate(cfg_dict, grid=grid)
    state = json.loads((tmp_path / "run" / "federation" / "state.json").read_text())
    assert len(state["history"]) == 2 and state["stage"] == 1 and state["round"] == 0
    results = simulate(cfg_dict)
    keys = [(r["stage"], r["round"]) for r in results["federation"]["rounds"]]
    assert keys == [(0, 0), (0, 1), (1, 0), (1, 1)]  # no round twice, none missing
    assert len(results["accuracy_matrix"]) == 2


def test_dp_fixed_clipping_mod_clips_every_update(tmp_path: Path) -> None:
    from medadapt.federated.messages import arrays

    seen: list[float] = []

    def measure(msg: Any, ctx: Any, call_next: Any) -> Any:
        reply = call_next(msg, ctx)
        if msg.metadata.message_type == "train":
            sent, back = arrays(msg.content.array_records["adapters"]), arrays(reply.content.array_records["adapters"])
            seen.append(float(np.sqrt(sum(((back[k] - sent[k]) ** 2).sum() for k in sent))))
        return reply

    clip = 1e-3
    results = simulate(tiny_config(tmp_path / "run", domains=1, rounds=1, privacy={"clipping_norm": clip, "noise_multiplier": 0.5}), mods={"hospital-0": [measure]})
    assert seen and all(n <= clip * 1.001 for n in seen)
    assert results["federation"]["privacy"]["clipping_norm"] == clip


# -- optimizer state across rounds --------------------------------------------------------------
def test_kept_optimizer_state_continues_across_rounds_and_only_forward(tmp_path: Path) -> None:
    """With keep_optimizer_state each site's AdamW carries on: after 2 rounds its step count is both rounds' steps."""
    import torch
    from safetensors.torch import load_file

    from medadapt.federated.site_optimizer import restore_site_optimizer

    results = simulate(tiny_config(tmp_path / "run", sites=2, domains=1, rounds=2, keep_optimizer_state=True))
    assert results["federation"]["keep_optimizer_state"] is True
    state_dir = tmp_path / "run.sites" / "hospital-0"
    kept = json.loads((state_dir / "optimizer" / "shared.json").read_text())
    assert (kept["stage"], kept["round"]) == (0, 1)
    steps = load_file(str(state_dir / "optimizer" / "shared.safetensors"))["0.step"].item()
    n_train = results["federation"]["rounds"][0]["samples"]["site-1"]["shared"]
    per_round = -(-n_train // 16)  # batch_size 16, one local epoch
    assert steps == 2 * per_round, (steps, per_round)  # a fresh optimizer each round would count per_round

    tensors = load_file(str(state_dir / "optimizer" / "shared.safetensors"))
    shapes = [tensors[f"{i}.exp_avg"].shape for i in range(len({k.split(".")[0] for k in tensors}))]

    def fresh() -> torch.optim.Optimizer:
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(s)) for s in shapes])

    config = kept["config"]
    later = fresh()
    assert restore_site_optimizer(state_dir, "shared", later, config, 0, 2)
    assert later.state_dict()["state"][0]["step"].item() == steps
    # only a later round of the same stage and run config continues; the kept round itself (repeated
    # after a server restart, or a rerun), another stage or config, and another adapter layout start fresh
    assert not restore_site_optimizer(state_dir, "shared", fresh(), config, 0, 1)
    assert not restore_site_optimizer(state_dir, "shared", fresh(), config, 1, 2)
    assert not restore_site_optimizer(state_dir, "shared", fresh(), "another-config", 0, 2)
    assert not restore_site_optimizer(state_dir, "shared", torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]), config, 0, 2)


def test_without_kept_optimizer_state_nothing_is_written(tmp_path: Path) -> None:
    results = simulate(tiny_config(tmp_path / "run", sites=2, domains=1, rounds=2, keep_optimizer_state=False))
    assert results["federation"]["keep_optimizer_state"] is False
    assert not (tmp_path / "run.sites" / "hospital-0" / "optimizer").exists()


# -- weights of memory-only sites ---------------------------------------------------------------
def test_replay_ratio_weights_give_memory_only_sites_the_rehearsal_share() -> None:
    from medadapt.federated.aggregation import replay_ratio_weights

    def update(site: str, n: int) -> SiteUpdate:
        return SiteUpdate(site, 0, {}, {"shared": n}, "b")

    ups = [update("new", 100), update("mem-big", 800), update("mem-small", 200), update("idle", 0)]
    w = replay_ratio_weights(ups, "shared", {"mem-big", "mem-small", "idle"}, 0.5)
    assert w == pytest.approx({"new": 100.0, "mem-big": 80.0, "mem-small": 20.0})
    w = replay_ratio_weights(ups, "shared", {"mem-big", "mem-small"}, 0.25)
    assert w["mem-big"] + w["mem-small"] == pytest.approx(100 * 0.25 / 0.75) and w["mem-big"] == pytest.approx(4 * w["mem-small"])
    assert replay_ratio_weights(ups, "shared", set(), 0.5) == {"new": 100.0, "mem-big": 800.0, "mem-small": 200.0}
    sent = {"shared/x": np.zeros(1, np.float32)}
    ups = [SiteUpdate("a", 0, {"shared/x": np.array([1.0], np.float32)}, {"shared": 1}, "b"), SiteUpdate("b", 0, {"shared/x": np.array([4.0], np.float32)}, {"shared": 3}, "b")]
    assert weighted_mean(ups, sent)[0]["shared/x"][0] == pytest.approx(3.25)
    assert weighted_mean(ups, sent, {"shared": {"a": 3.0, "b": 1.0}})[0]["shared/x"][0] == pytest.approx(1.75)


def test_memory_weight_replay_ratio_reweights_the_rehearsing_sites_in_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medadapt.federated import server_loop

    seen: list[tuple[list[SiteUpdate], Any]] = []
    real = server_loop.weighted_mean

    def spy(updates: list[SiteUpdate], sent: Any, weights: Any = None) -> Any:
        seen.append((updates, weights))
        return real(updates, sent, weights)

    monkeypatch.setattr(server_loop, "weighted_mean", spy)
    results = simulate(tiny_config(tmp_path / "run", rounds=1, memory_weight="replay_ratio"))
    assert results["federation"]["memory_weight"] == "replay_ratio"
    updates, weights = seen[1]  # stage 2 ("us"): only hospital-0 holds it, the others rehearse their memory
    counts = {u.site: u.counts["shared"] for u in updates}
    assert all(counts.values())
    assert weights["shared"]["hospital-0"] == counts["hospital-0"]
    assert weights["shared"]["hospital-1"] + weights["shared"]["hospital-2"] == pytest.approx(counts["hospital-0"])  # ratio 0.5
    with pytest.raises(ConfigError, match="memory_weight 'mean' unknown"):
        federated_config_from_dict(tiny_config(tmp_path / "x", memory_weight="mean"))
