"""Secure aggregation (issue 17): Flower's own SecAgg+ (``secaggplus_mod`` + ``SecAggPlusWorkflow``)
with medadapt's ClientApp and ServerApp, every site in-process behind :class:`LocalGrid`.

The real deployment runtime with a SuperNode killed mid-run is in test_federated_deployment.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from medadapt import ConfigError, ContinualVLM, FederationError  # noqa: E402
from medadapt.federated import federated_config_from_dict  # noqa: E402
from medadapt.federated.secure_layout import SecureLayout  # noqa: E402
from tests.test_federated import simulate, tiny_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("core_single_thread")
SECURE = {"privacy": {"secure_aggregation": True}}


@pytest.fixture(autouse=True)
def quiet_flower() -> Any:
    """Flower logs every SecAgg+ stage at DEBUG; keep the test output to medadapt's own lines."""
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    yield
    flwr_logger.setLevel(level)


class PackSpy:
    """Records, per site node, the plain trained and received tensors a site packs for SecAgg+."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from flwr.common import parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        from medadapt.federated import secure_client

        self.seen: list[dict[str, Any]] = []
        real = secure_client.pack_reply

        def spy(msg: Any, reply: Any) -> Any:
            if not reply.has_error():
                fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
                fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
                self.seen.append({"node": msg.metadata.dst_node_id, "names": SecureLayout.from_json(str(fitins.config["secure-layout"])).names,
                                  "received": parameters_to_ndarrays(fitins.parameters),
                                  "trained": parameters_to_ndarrays(fitres.parameters), "metrics": dict(fitres.metrics)})
            return real(msg, reply)

        monkeypatch.setattr(secure_client, "pack_reply", spy)


# -- the layout, without Flower ------------------------------------------------------------------
def test_layout_sum_reads_back_as_each_groups_sample_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    sent = {"dom/a": rng.normal(size=(3, 4)).astype(np.float32), "shared/a": rng.normal(size=(2,)).astype(np.float32), "shared/b": rng.normal(size=(5,)).astype(np.float32)}
    layout = SecureLayout.build(sent, {"shared": 2}, max_weight=100.0, clipping_range=10.0)
    layout = SecureLayout.from_json(layout.to_json())  # what a site reads from its train message
    sites = [  # (counts, slot of shared): site 0 and 1 hold new data, site 2 only rehearses, site 3 trained nothing
        ({"dom": 30, "shared": 30}, 0), ({"dom": 10, "shared": 10}, 0), ({"dom": 0, "shared": 50}, 1), ({"dom": 0, "shared": 0}, 0)]
    trained = [{k: v + rng.normal(scale=0.1, size=v.shape).astype(np.float32) for k, v in sent.items()} for _ in sites]
    vectors = [layout.pack([t[k] for k in layout.names], [sent[k] for k in layout.names], counts, {"shared": slot}) for t, (counts, slot) in zip(trained, sites)]
    assert [v.shape for v in vectors[0]] == layout.vector_shapes()
    total = [sum(v[i] for v in vectors) for i in range(len(vectors[0]))]
    groups = {name: (tensors, counts) for name, tensors, counts in layout.group_means(total, sent)}
    new, memory = groups["new"], groups["memory"]
    assert new[1] == pytest.approx({"dom": 40.0, "shared": 40.0}) and memory[1] == pytest.approx({"shared": 50.0})
    np.testing.assert_allclose(new[0]["dom/a"], (30 * trained[0]["dom/a"] + 10 * trained[1]["dom/a"]) / 40, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new[0]["shared/b"], (30 * trained[0]["shared/b"] + 10 * trained[1]["shared/b"]) / 40, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(memory[0]["shared/b"], trained[2]["shared/b"], rtol=1e-5, atol=1e-6)
    assert "dom/a" not in memory[0]  # nobody trained the domain adapter in the memory slot


def test_a_site_refuses_to_pack_what_secagg_would_silently_clip_or_garble() -> None:
    sent = {"dom/a": np.zeros((4,), np.float32)}
    layout = SecureLayout.build(sent, {}, max_weight=10.0, clipping_range=0.5)
    with pytest.raises(FederationError, match="secure_clipping_range=0.5"):
        layout.pack([np.full((4,), 1.0, np.float32)], [sent["dom/a"]], {"dom": 10}, {})  # weight 1 x change 1 > 0.5
    with pytest.raises(FederationError, match="NaN or inf"):
        layout.pack([np.array([np.nan, 0, 0, 0], np.float32)], [sent["dom/a"]], {"dom": 1}, {})
    with pytest.raises(FederationError, match="malformed"):
        SecureLayout.from_json('{"names": ["x"]}')


@pytest.mark.parametrize(
    "privacy, message",
    [({"secure_aggregation": "yes"}, "true or false"), ({"secure_aggregation": True, "secure_clipping_range": 0}, "secure_clipping_range must be"),
     ({"secure_aggregation": True, "secure_max_weight": -1}, "secure_max_weight must be"), ({"secure_aggregation": True, "tls": True}, "federation.privacy must be")],
)
def test_bad_secure_aggregation_settings_are_clear_errors(tmp_path: Path, privacy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        federated_config_from_dict(tiny_config(tmp_path / "run", privacy=privacy))


def test_secure_aggregation_needs_two_sites_and_overrides_keep_the_other_privacy_keys(tmp_path: Path) -> None:
    import yaml

    from medadapt.federated import load_federated_config

    with pytest.raises(ConfigError, match="min_sites >= 2"):
        federated_config_from_dict(tiny_config(tmp_path / "run", min_sites=1, **SECURE))
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", privacy={"clipping_norm": 0.5})))
    config = load_federated_config(path, ["federation.privacy.secure_aggregation=true"])
    assert config.federation.privacy.secure_aggregation and config.federation.privacy.clipping_norm == 0.5


# -- runs --------------------------------------------------------------------------------------------
def _max_diff(a: ContinualVLM, b: ContinualVLM) -> float:
    return max(float((a.adapter_state_dict(n)[k] - b.adapter_state_dict(n)[k]).abs().max()) for n in a.adapter_names() for k in a.adapter_state_dict(n))


@pytest.mark.parametrize("aggregation", ["fedavg", "ffa_lora"])
def test_secure_run_matches_the_plain_weighted_mean_and_the_server_sees_only_masked_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aggregation: str) -> None:
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from tests.test_federated import Recorder

    spy = PackSpy(monkeypatch)
    recorders = {f"hospital-{i}": Recorder() for i in range(3)}
    plain = simulate(tiny_config(tmp_path / "plain", aggregation, rounds=2))
    secure = simulate(tiny_config(tmp_path / "secure", aggregation, rounds=2, **SECURE), mods={k: [v] for k, v in recorders.items()})
    # stage 2 (us) has the shared adapter trained on new data at hospital-0 and on memory alone at the others:
    # the replay-ratio weighting across the two groups is reproduced from the secure sum
    diff = _max_diff(ContinualVLM.from_pretrained(tmp_path / "plain"), ContinualVLM.from_pretrained(tmp_path / "secure"))
    assert diff < 2e-4, diff  # SecAgg+'s quantisation (2**22 levels over +-1) is the only difference
    assert [r["sites"] for r in secure["federation"]["rounds"]] == [r["sites"] for r in plain["federation"]["rounds"]]
    assert [r["adapter_samples"] for r in secure["federation"]["rounds"]] == [r["adapter_samples"] for r in plain["federation"]["rounds"]]
    assert all(r["secure_aggregation"] for r in secure["federation"]["rounds"])
    # what left each site: no ArrayRecord holds a tensor, and the masked vector says nothing of the site's update
    masked = 0
    for site, recorder in recorders.items():
        for kind, reply in recorder.sent:
            if not kind.startswith("train"):
                continue
            assert all(len(record) == 0 for record in reply.content.array_records.values()), site
            arrays = reply.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.MASKED_PARAMETERS)
            if arrays:
                vector = [bytes_to_ndarray(b) for b in arrays][1:]
                plain_update = next(s for s in spy.seen if s["node"] == reply.metadata.src_node_id)
                first = np.asarray(vector[0], np.float64).ravel()
                update = (plain_update["trained"][0] - plain_update["received"][0]).ravel()
                assert first.min() >= 0 and first.max() < 2**32 and first.std() > 2**28  # uniform-looking mask over the modulus
                assert abs(np.corrcoef(first, update)[0, 1]) < 0.3
                masked += 1
    assert masked == 3 * len(secure["federation"]["rounds"])


@pytest.mark.parametrize("dies_at", ["setup", "share_keys", "collect_masked_vectors"])
def test_secure_round_survives_a_site_that_dies_at_any_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_at: str) -> None:
    """SecAgg+ dropout. Dying at ``collect_masked_vectors``, after sharing its keys, its neighbours' key shares remove
    its masks; dying earlier (before any mask was made with it), Flower 1.42's workflow alone halts the round (the
    others hold no share of its key), which medadapt's workflow avoids by leaving it out of the sampled sites."""
    from medadapt.federated.simulation import simulation_grid

    spy = PackSpy(monkeypatch)
    cfg = tiny_config(tmp_path / "run", domains=1, rounds=2, **SECURE)
    grid = simulation_grid(federated_config_from_dict(cfg))
    real, victim = grid.push_messages, max(grid.nodes)

    def push(messages: Any) -> Any:
        messages = list(messages)
        stages = [m.content.config_records.get("secaggplus_configs", {}).get("stage") for m in messages]
        if dies_at in stages and len(spy.seen) >= 3:  # in round 2, as this stage's messages go out
            grid.dead.add(victim)
        return real(messages)

    grid.push_messages = push
    results = simulate(cfg, grid=grid)
    first, second = results["federation"]["rounds"]
    assert first["sites"] == ["site-1", "site-2", "site-3"]
    assert second["sites"] == ["site-1", "site-2"] and second["failed"] == [{"site": "site-3", "error": "dropped out of the SecAgg+ round"}]
    assert second["attempts"] == 1
    # the round's mean is exactly the two survivors' sample-weighted mean (their plain tensors, seen before masking)
    survivors = [s for s in spy.seen[3:] if s["node"] != victim]
    assert len(survivors) == 2
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    for i, name in enumerate(survivors[0]["names"]):
        adapter, key = name.split("/", 1)
        weights = [s["metrics"][f"num-examples.{adapter}"] for s in survivors]
        expected = sum(w * s["trained"][i].astype(np.float64) for w, s in zip(weights, survivors)) / sum(weights)
        np.testing.assert_allclose(model.adapter_state_dict(adapter)[key].numpy(), expected, atol=5e-5, err_msg=name)


def test_secure_round_drops_a_reply_whose_clear_parts_are_wrong_and_never_sums_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    class Tamper:
        """Hospital-2's masked reply: another base's fingerprint in round 1, a vector of the wrong shape in round 2."""

        def __init__(self) -> None:
            self.round = 0

        def __call__(self, msg: Any, ctx: Any, call_next: Any) -> Any:
            reply = call_next(msg, ctx)
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if reply.has_error() or not configs or Key.MASKED_PARAMETERS not in configs:
                return reply
            self.round += 1
            if self.round == 1:
                reply.content.config_records["fitres.metrics"]["base"] = "0" * 32
            else:
                configs[Key.MASKED_PARAMETERS] = list(configs[Key.MASKED_PARAMETERS])[:-1]
            return reply

    with caplog.at_level(logging.ERROR):
        results = simulate(tiny_config(tmp_path / "run", domains=1, rounds=2, **SECURE), mods={"hospital-2": [Tamper()]})
    rounds = results["federation"]["rounds"]
    assert [r["sites"] for r in rounds] == [["site-1", "site-2"]] * 2
    assert "base fingerprint" in rounds[0]["dropped"][0]["reason"] and rounds[0]["dropped"][0]["site"] == "site-3"
    assert "masked vector has" in rounds[1]["dropped"][0]["reason"]
    assert "dropped" in caplog.text
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    assert all(np.isfinite(t.numpy()).all() and np.abs(t.numpy()).max() < 10 for t in model.adapter_state_dict("shared").values())


def test_dp_clipping_applies_before_masking_under_secure_aggregation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PackSpy(monkeypatch)
    clip = 1e-3
    simulate(tiny_config(tmp_path / "run", domains=1, rounds=1, privacy={"secure_aggregation": True, "clipping_norm": clip}))
    norms = [float(np.sqrt(sum(((t - r).astype(np.float64) ** 2).sum() for t, r in zip(s["trained"], s["received"])))) for s in spy.seen]
    assert len(norms) == 3 and all(n <= clip * 1.001 for n in norms) and max(norms) > clip * 0.99  # clipped (updates are far larger)


def test_a_site_beyond_the_secure_clipping_range_says_which_setting_to_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_config(tmp_path / "run", domains=1, rounds=1, privacy={"secure_aggregation": True, "secure_clipping_range": 1e-6})
    with caplog.at_level(logging.ERROR), pytest.raises(FederationError, match="fewer than 2 usable site updates"):
        simulate({**cfg, "federation": {**cfg["federation"], "round_timeout_s": 5}})
    assert "raise secure_clipping_range or secure_max_weight" in caplog.text
