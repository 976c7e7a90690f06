"""medadapt's Flower ``ClientApp``: one per site (a SuperNode per hospital, or a client in simulation).

The site reads everything local from its node config (``flower-supernode --node-config``):
``site`` (its name in ``federation.sites``), ``config`` (the run config YAML on this machine),
``data-dir`` (folder that relative data paths resolve against; optional) and ``state-dir`` (where
its rehearsal memory is checkpointed; default ``.medadapt-site/<site>``). Client-side DP clipping is
Flower's ``fixedclipping_mod``, applied when the server's train message carries a clipping norm;
secure aggregation is Flower's ``secaggplus_mod`` (:mod:`.secure_client`), for SecAgg+ rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

from .extra import require_flwr

require_flwr()

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from ..errors import FederationError  # noqa: E402
from .messages import ADAPTERS, METRICS, SITE, arrays, config_of, train_adapters, train_reply  # noqa: E402
from .secure_client import dp_clipping_mod, is_secure_train, secure_aggregation_mod, secure_train_reply, secure_train_request  # noqa: E402
from .settings import FederatedConfig, load_federated_config  # noqa: E402
from .site import SiteRuntime  # noqa: E402

_RUNTIMES: dict[tuple[str, str, str, str], SiteRuntime] = {}
_IN_MEMORY: dict[str, FederatedConfig] = {}
MEMORY_PREFIX = "memory:"


def provide_config(config: FederatedConfig) -> str:
    """Hand an in-memory config to in-process sites (simulation); returns the value for their ``config`` node setting."""
    token = f"{MEMORY_PREFIX}{config.fingerprint()}-{id(config)}"
    _IN_MEMORY[token] = config
    return token


def forget_sites() -> None:
    """Drop every cached site (and in-memory config) of this process."""
    _RUNTIMES.clear()
    _IN_MEMORY.clear()


def site_runtime(context: Context) -> SiteRuntime:
    """This node's :class:`SiteRuntime`, built once per process from its node config."""
    node = context.node_config
    site, path = node.get("site"), node.get("config")
    if not site or not path:
        raise FederationError("this SuperNode's node config must give `site` (its name in federation.sites) and `config` (the run config YAML), "
                              "e.g. --node-config \"site='site-a' config='/data/fed.yaml'\".")
    data_dir = str(node.get("data-dir", "") or "")
    state_dir = str(node.get("state-dir", "") or Path(".medadapt-site") / str(site))
    key = (str(site), str(path), data_dir, state_dir)
    if key not in _RUNTIMES:
        config = _IN_MEMORY[str(path)] if str(path) in _IN_MEMORY else load_federated_config(str(path))
        _RUNTIMES[key] = SiteRuntime(config, str(site), state_dir, data_dir or None)
    return _RUNTIMES[key]


app = ClientApp(mods=[secure_aggregation_mod, dp_clipping_mod])  # a SecAgg+ reply is clipped first, then masked


@app.query()
def hello(msg: Message, context: Context) -> Message:
    """Tell the server who this site is (name, base and config fingerprints, domains held)."""
    runtime = site_runtime(context)
    cfg = config_of(msg.content)
    runtime.check_peer(str(cfg.get("base", "")), str(cfg.get("config", "")), None)
    summary = runtime.summary()
    return Message(RecordDict({SITE: ConfigRecord({**{k: v for k, v in summary.items() if k != "domains"}, "domains": list(summary["domains"])})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this stage's adapters locally from the received tensors; reply with tensors and counts only."""
    runtime = site_runtime(context)
    if is_secure_train(msg.content):
        cfg, received, layout = secure_train_request(msg.content)
    else:
        cfg, received, layout = config_of(msg.content), arrays(msg.content.array_records[ADAPTERS]), None
    runtime.check_peer(str(cfg.get("base", "")), str(cfg.get("config", "")), cfg.get("frozen"))
    tensors, counts, loss = runtime.train(int(cfg["stage"]), train_adapters(cfg), received, int(cfg["round"]), int(cfg["epochs"]))
    if layout is not None:
        return Message(secure_train_reply(tensors, counts, loss, runtime.base, layout), reply_to=msg)
    return Message(train_reply(tensors, counts, loss, runtime.base), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received adapters on the full test split of each domain this site holds."""
    from flwr.app import MetricRecord

    runtime = site_runtime(context)
    cfg = config_of(msg.content)
    runtime.check_peer(str(cfg.get("base", "")), str(cfg.get("config", "")), None)
    metrics = runtime.evaluate(arrays(msg.content.array_records[ADAPTERS]), json.loads(str(cfg["views"])))
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
