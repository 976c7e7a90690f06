"""Tests for medadapt.rehearsal: buffer bounds, policies, determinism, state round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medadapt.rehearsal import (
    RehearsalBuffer,
    RehearsalError,
    available_policies,
    get_policy,
    replay_count,
)

STAGES = [
    ("a", np.arange(100) % 2),  # 2 classes
    ("b", np.arange(90) % 3),  # 3 classes
    ("c", np.r_[np.zeros(40, int), np.ones(5, int)]),  # 2 classes, one small
]


def _fill(buf: RehearsalBuffer, stages=STAGES) -> RehearsalBuffer:
    for d, y in stages:
        buf.add_stage(d, y)
    return buf


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_bounded_references_only(policy: str) -> None:
    buf = RehearsalBuffer(30, policy=policy, seed=1)
    for n_stages, (d, y) in enumerate(STAGES, 1):
        buf.add_stage(d, y)
        assert len(buf) == 30
        assert len(buf.stages) == n_stages
    labels = dict(STAGES)
    for d, i, lab in buf.items():
        assert isinstance(d, str) and type(i) is int and type(lab) is int
        assert lab == labels[d][i]
    assert len(set(buf.items())) == 30  # no duplicates
    assert buf.domains() == ["a", "b", "c"]


def test_reservoir_uniform_inclusion() -> None:
    sizes = [30, 50, 20]
    counts = [np.zeros(n) for n in sizes]
    runs = 400
    for seed in range(runs):
        buf = RehearsalBuffer(20, policy="reservoir", seed=seed)
        for k, n in enumerate(sizes):
            buf.add_stage(f"d{k}", np.zeros(n, dtype=int))
        for d, i, _ in buf.items():
            counts[int(d[1:])][i] += 1
    freq = np.concatenate(counts) / runs
    # each of the 100 samples seen should be in memory with probability 20/100
    assert abs(freq.mean() - 0.2) < 1e-9  # memory is always full
    assert np.all(np.abs(freq - 0.2) < 0.09)  # ~4.5 binomial s.d.
    for c in counts:  # no stage favoured
        assert abs(c.mean() / runs - 0.2) < 0.03


def test_class_balanced_groups() -> None:
    buf = _fill(RehearsalBuffer(30, policy="class_balanced", seed=0))
    c = buf.counts()
    # 7 groups (a:2, b:3, c:2), 30 slots -> 4 each + 2 leftover to the first groups
    assert sorted(c) == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("c", 0), ("c", 1)]
    assert sum(c.values()) == 30
    assert max(c.values()) - min(c.values()) <= 1
    assert c[("a", 0)] == 5 and c[("a", 1)] == 5 and c[("c", 1)] == 4


def test_class_balanced_small_group_gives_slots_to_others() -> None:
    buf = RehearsalBuffer(10, policy="class_balanced", seed=0)
    buf.add_stage("a", np.r_[np.zeros(50, int), np.ones(2, int)])
    assert buf.counts() == {("a", 0): 8, ("a", 1): 2}


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_deterministic_for_seed(policy: str) -> None:
    a = _fill(RehearsalBuffer(25, policy=policy, seed=7))
    b = _fill(RehearsalBuffer(25, policy=policy, seed=7))
    assert a.items() == b.items()
    assert a.state_dict() == b.state_dict()
    c = _fill(RehearsalBuffer(25, policy=policy, seed=8))
    assert c.items() != a.items()


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_state_dict_json_round_trip(policy: str) -> None:
    never_saved = _fill(RehearsalBuffer(25, policy=policy, seed=3))
    first = _fill(RehearsalBuffer(25, policy=policy, seed=3), STAGES[:2])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = RehearsalBuffer.from_state_dict(state)
    assert resumed.items() == first.items() and resumed.stages == ["a", "b"]
    other = RehearsalBuffer(5, policy="reservoir", seed=99)
    other.load_state_dict(state)
    for buf in (resumed, other):
        buf.add_stage(*STAGES[2])
        assert buf.items() == never_saved.items()
        assert buf.state_dict() == never_saved.state_dict()


def test_size_zero_disabled() -> None:
    buf = _fill(RehearsalBuffer(0))
    assert len(buf) == 0 and buf.items() == [] and buf.domains() == []
    assert buf.stages == ["a", "b", "c"]
    assert buf.sample(8, np.random.default_rng(0)) == []
    assert RehearsalBuffer.from_state_dict(json.loads(json.dumps(buf.state_dict()))).stages == buf.stages


def test_sample() -> None:
    buf = _fill(RehearsalBuffer(20, seed=0))
    rng = np.random.default_rng(0)
    s = buf.sample(10, rng)
    assert len(s) == 10 and len(set(s)) == 10 and set(s) <= set(buf.items())
    s = buf.sample(50, rng)  # more than len: with replacement
    assert len(s) == 50 and set(s) <= set(buf.items())
    assert buf.sample(0, rng) == []
    before = buf.items()
    buf.sample(5, rng)
    assert buf.items() == before


def test_errors() -> None:
    with pytest.raises(RehearsalError, match="known policies: .*reservoir"):
        RehearsalBuffer(10, policy="fifo")
    with pytest.raises(RehearsalError, match="class_balanced"):
        get_policy("nope")
    assert {"reservoir", "class_balanced"} <= set(available_policies())
    with pytest.raises(RehearsalError, match=">= 0"):
        RehearsalBuffer(-1)
    buf = RehearsalBuffer(5)
    buf.add_stage("a", [0, 1, 0])
    with pytest.raises(RehearsalError, match="already added"):
        buf.add_stage("a", [0, 1])
    with pytest.raises(RehearsalError, match="non-empty"):
        buf.add_stage("b", [])
    with pytest.raises(RehearsalError, match="missing keys"):
        buf.load_state_dict({"size": 3})


def test_replay_count() -> None:
    assert replay_count(32, 0.0) == 0
    assert replay_count(32, 0.5) == 32
    assert replay_count(32, 0.2) == 8
    assert replay_count(1, 0.01) == 1
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(RehearsalError, match=r"\[0, 1\)"):
            replay_count(32, bad)
    with pytest.raises(RehearsalError, match="batch_size"):
        replay_count(0, 0.5)
