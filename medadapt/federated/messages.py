"""Flower records of medadapt's messages (Message API: ``ArrayRecord``, ``ConfigRecord``, ``MetricRecord``).

Server -> site: ``train`` (the stage's adapter tensors + a config record), ``evaluate`` (every
adapter's tensors + the views to score), ``query`` (who are you). Site -> server: adapter tensors,
sample counts, the training loss, metrics and its base fingerprint; never data or memories.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

from .extra import require_flwr

require_flwr()

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

ADAPTERS = "adapters"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
NUM_EXAMPLES = "num-examples"
CLIPPING_NORM_KEY = "clipping_norm"  # the key Flower's fixedclipping_mod reads (flwr.supercore.differential_privacy)


def array_record(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` of named float32 arrays (keys keep their order)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()})


def arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The named numpy arrays of an ``ArrayRecord``."""
    return {k: v.numpy() for k, v in record.items()}


def train_config(stage: int, round_index: int, adapters: list[str], epochs: int, checks: Mapping[str, str], clipping_norm: float | None) -> dict[str, Any]:
    """What a ``train`` message asks for (adapters as a JSON list, so the legacy FitIns config of SecAgg+ can carry it too)."""
    config: dict[str, Any] = {"stage": stage, "round": round_index, "adapters": json.dumps(list(adapters)), "epochs": epochs, **checks}
    if clipping_norm is not None:
        config[CLIPPING_NORM_KEY] = float(clipping_norm)
    return config


def train_adapters(config: Mapping[str, Any]) -> list[str]:
    """The adapters a ``train`` config names."""
    raw = config["adapters"]
    return [str(a) for a in (json.loads(raw) if isinstance(raw, str) else raw)]


def train_content(tensors: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> RecordDict:
    """A ``train`` message: the tensors to start from and what to train (:func:`train_config`)."""
    return RecordDict({ADAPTERS: array_record(tensors), CONFIG: ConfigRecord(dict(config))})


def train_reply(tensors: Mapping[str, np.ndarray], counts: Mapping[str, int], loss: float, base: str) -> RecordDict:
    """A site's ``train`` reply: adapter tensors, samples per adapter, mean loss, base fingerprint."""
    metrics: dict[str, Any] = {NUM_EXAMPLES: int(sum(counts.values())), "train-loss": float(loss)}
    metrics.update({f"{NUM_EXAMPLES}.{k}": int(v) for k, v in counts.items()})
    return RecordDict({ADAPTERS: array_record(tensors), METRICS: MetricRecord(metrics), SITE: ConfigRecord({"base": base})})


def counts_of(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The samples per adapter in a reply's metrics (``num-examples.<adapter>``)."""
    return {k[len(NUM_EXAMPLES) + 1 :]: v for k, v in metrics.items() if k.startswith(NUM_EXAMPLES + ".")}


def parse_train_reply(content: RecordDict) -> tuple[dict[str, np.ndarray], dict[str, int], float, str]:
    """(tensors, counts per adapter, loss, base fingerprint) of a ``train`` reply; missing parts read as empty."""
    tensors = arrays(content.array_records[ADAPTERS]) if ADAPTERS in content.array_records else {}
    metrics = dict(content.metric_records[METRICS]) if METRICS in content.metric_records else {}
    counts = counts_of(metrics)
    base = str(content.config_records[SITE].get("base", "")) if SITE in content.config_records else ""
    return tensors, counts, float(metrics.get("train-loss", 0.0)), base


def evaluate_content(tensors: Mapping[str, np.ndarray], views: Mapping[str, Mapping[str, str | None]], checks: Mapping[str, str]) -> RecordDict:
    """An ``evaluate`` message: every adapter's tensors and, per view, which adapter scores each domain."""
    return RecordDict({ADAPTERS: array_record(tensors), CONFIG: ConfigRecord({"views": json.dumps(views), **checks})})


def query_content(checks: Mapping[str, str]) -> RecordDict:
    """A ``query`` message: the server's base and configuration fingerprints."""
    return RecordDict({CONFIG: ConfigRecord(dict(checks))})


def config_of(content: RecordDict) -> dict[str, Any]:
    """The config record of a server message."""
    return dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}


# -- SecAgg+ rounds: the train instruction is a legacy FitIns, the reply a FitRes whose metrics travel in clear --
LAYOUT_KEY = "secure-layout"
SLOTS_KEY = "secure-slots"
DIGEST_KEY = "secure-layout-digest"


def clear_metrics(counts: Mapping[str, int], loss: float, base: str, layout_digest: str) -> dict[str, Any]:
    """The FitRes metrics a site sends in clear beside its masked vector (SecAgg+ rounds)."""
    return {"train-loss": float(loss), "base": base, DIGEST_KEY: layout_digest, **{f"{NUM_EXAMPLES}.{k}": int(v) for k, v in counts.items()}}


def read_clear_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, int], float, str, str]:
    """(counts per adapter, loss, base fingerprint, layout digest) of :func:`clear_metrics`; missing parts read as empty."""
    return counts_of(metrics), float(metrics.get("train-loss", 0.0) or 0.0), str(metrics.get("base", "")), str(metrics.get(DIGEST_KEY, ""))
