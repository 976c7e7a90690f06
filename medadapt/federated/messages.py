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


def train_content(tensors: Mapping[str, np.ndarray], stage: int, round_index: int, adapters: list[str], epochs: int, checks: Mapping[str, str], clipping_norm: float | None) -> RecordDict:
    """A ``train`` message: the tensors to start from and what to train."""
    config: dict[str, Any] = {"stage": stage, "round": round_index, "adapters": list(adapters), "epochs": epochs, **checks}
    if clipping_norm is not None:
        config[CLIPPING_NORM_KEY] = float(clipping_norm)
    return RecordDict({ADAPTERS: array_record(tensors), CONFIG: ConfigRecord(config)})


def train_reply(tensors: Mapping[str, np.ndarray], counts: Mapping[str, int], loss: float, base: str) -> RecordDict:
    """A site's ``train`` reply: adapter tensors, samples per adapter, mean loss, base fingerprint."""
    metrics: dict[str, Any] = {NUM_EXAMPLES: int(sum(counts.values())), "train-loss": float(loss)}
    metrics.update({f"{NUM_EXAMPLES}.{k}": int(v) for k, v in counts.items()})
    return RecordDict({ADAPTERS: array_record(tensors), METRICS: MetricRecord(metrics), SITE: ConfigRecord({"base": base})})


def parse_train_reply(content: RecordDict) -> tuple[dict[str, np.ndarray], dict[str, int], float, str]:
    """(tensors, counts per adapter, loss, base fingerprint) of a ``train`` reply; missing parts read as empty."""
    tensors = arrays(content.array_records[ADAPTERS]) if ADAPTERS in content.array_records else {}
    metrics = dict(content.metric_records[METRICS]) if METRICS in content.metric_records else {}
    counts = {k[len(NUM_EXAMPLES) + 1 :]: v for k, v in metrics.items() if k.startswith(NUM_EXAMPLES + ".")}
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
