"""Flower's deployment runtime for real (issue 17), through :class:`LoopbackFederation`: a SuperLink
and SuperNodes as processes on 127.0.0.1, ``flwr run`` of a 2-round tiny federation, then the model
save it wrote; and the same with SecAgg+ on three SuperNodes, one of them SIGKILLed mid-run.

Takes minutes (every ClientApp message starts a process that builds the tiny base), so it is marked
``deployment`` and ``slow``: README's default test command deselects it and .ci/run runs it in its
own block. Every process is bounded by time and stopped by the test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tests.test_federated import tiny_config  # noqa: E402

pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.timeout(600)]


def test_superlink_two_supernodes_and_flwr_run_write_a_save(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python recipes/federated.py --runtime loopback``: the whole deployment from the recipe's command line."""
    from medadapt import ContinualVLM
    from medadapt.federated.cli import main

    cfg = tiny_config(tmp_path / "run", sites=2, rounds=2, domains=1)
    cfg["federation"]["round_timeout_s"] = 120
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "fed.yaml"), "--runtime", "loopback"]) == 0, capsys.readouterr()
    assert '"rounds": 2' in capsys.readouterr().out
    logs = tmp_path / "run.loopback" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["flwr-run.log", "hospital-0.log", "hospital-1.log", "superlink.log"]
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    assert model.adapter_names() == ["xray", "shared"]
    assert model.provenance["shared"]["federated"]["rounds"] == 2
    assert sorted(model.provenance["shared"]["federated"]["sites"]) == ["site-1", "site-2"]
    samples = model.provenance["shared"]["federated"]["samples_per_site"]
    assert all(n > 0 for n in samples.values())
    # every ClientApp message is a fresh process: the site's AdamW state crossed rounds through its state-dir
    state = tmp_path / "run.sites" / "hospital-0" / "optimizer"
    kept = json.loads((state / "shared.json").read_text())
    assert (kept["stage"], kept["round"]) == (0, 1)
    steps = load_file(str(state / "shared.safetensors"))["0.step"].item()
    assert steps == 2 * -(-(samples["site-1"] // 2) // 16), (steps, samples)
    # the SuperNodes' and flwr run's command lines name the loopback's config file: none may outlive the run
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "run.loopback")], capture_output=True, text=True).stdout.split()
    assert not leftovers, f"processes still running after the run: {leftovers}"


def test_secure_aggregation_on_three_supernodes_survives_one_killed_mid_run(tmp_path: Path) -> None:
    """SecAgg+ on the real runtime; hospital-2's SuperNode is SIGKILLed once round 1 is complete.

    Round 2 goes on with the two others (SecAgg+ needs 2 of 3 key shares; min_sites is 2), records
    the dead site as failed, and the run writes its save.
    """
    from medadapt import ContinualVLM
    from medadapt.federated.loopback import LoopbackFederation

    cfg = tiny_config(tmp_path / "run", sites=3, rounds=2, domains=1, privacy={"secure_aggregation": True})
    cfg["federation"]["round_timeout_s"] = 60
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(cfg))
    state = tmp_path / "run" / "federation" / "state.json"
    with LoopbackFederation(tmp_path / "fed.yaml", timeout_s=420) as fed:
        fed.start()
        fed.launch()
        fed.wait_for(lambda: state.is_file() and len(json.loads(state.read_text())["history"]) >= 1, 300, "round 1 to complete")
        fed.kill("hospital-2")
        results = fed.wait()
        server_log = fed.log_text("flwr-run")
    rounds = results["federation"]["rounds"]
    assert [r["secure_aggregation"] for r in rounds] == [True, True]
    assert rounds[0]["sites"] == ["site-1", "site-2", "site-3"]
    assert rounds[1]["sites"] == ["site-1", "site-2"], rounds[1]
    # either round 2's SecAgg+ asked the dead node and recovered its masks, or the SuperLink had already dropped it
    assert rounds[1]["failed"] == [{"site": "site-3", "error": "dropped out of the SecAgg+ round"}] or "left the federation" in server_log, (rounds[1], server_log[-3000:])
    assert "Secure aggregation completed" in server_log
    model = ContinualVLM.from_pretrained(tmp_path / "run")
    assert model.provenance["shared"]["federated"]["rounds"] == 2
    assert model.adapter_names() == ["xray", "shared"]
    assert all(p.poll() is not None for p in fed.processes.values())  # every process it started has ended
