"""One training round under secure aggregation: Flower's own ``SecAggPlusWorkflow`` over the server's Grid.

Flower 1.42 ships SecAgg+ as a legacy workflow: it asks a ``Strategy`` for each node's ``FitIns``,
runs the protocol's four stages (setup, share keys, collect masked vectors, unmask) as train
messages, and hands the unmasked *sum* to ``Strategy.aggregate_fit``. :class:`RoundStrategy` is the
thin legacy Strategy that feeds it medadapt's per-site train instructions and keeps what comes back;
:class:`ScreeningGrid` checks the clear parts of every masked reply (base fingerprint, layout, shapes,
counts) and drops a bad one before it is summed: the workflow then treats that site as dropped out
and removes its masks with its neighbours' key shares. Sites' values themselves are never visible.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .extra import require_flwr

require_flwr()

from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.common import FitIns, bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.compat.grid_client_proxy import GridClientProxy  # noqa: E402
from flwr.server.compat.legacy_context import LegacyContext  # noqa: E402
from flwr.server.strategy import Strategy  # noqa: E402
from flwr.server.workflow import SecAggPlusWorkflow  # noqa: E402
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD  # noqa: E402
from flwr.server.workflow.constant import Key as WorkflowKey  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from ..errors import FederationError  # noqa: E402
from .messages import LAYOUT_KEY, SLOTS_KEY, read_clear_metrics  # noqa: E402
from .screening import SiteUpdate  # noqa: E402
from .secure_layout import SecureLayout  # noqa: E402

logger = logging.getLogger(__name__)

QUANTIZATION_RANGE = 2**22  # Flower's default: n sites' quantised sums stay below its 2**32 modulus for n < 1024


class RoundStrategy(Strategy):
    """The legacy ``Strategy`` SecAgg+ needs: hands out ``fitins`` per node and keeps the secure mean it is given."""

    def __init__(self, fitins: dict[int, FitIns], proxies: dict[int, GridClientProxy]) -> None:
        self.fitins = fitins
        self.proxies = proxies
        self.mean: list[np.ndarray] | None = None
        self.metrics: dict[int, dict[str, Any]] = {}

    def initialize_parameters(self, client_manager: Any) -> None:  # noqa: D102 - the Strategy interface
        return None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, FitIns]]:  # noqa: D102
        return [(self.proxies[node], ins) for node, ins in sorted(self.fitins.items())]

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]) -> tuple[None, dict[str, Any]]:  # noqa: D102
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
            self.metrics = {proxy.node_id: dict(res.metrics) for proxy, res in results}
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:  # noqa: D102
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict[str, Any]]:  # noqa: D102
        return None, {}

    def evaluate(self, server_round: int, parameters: Any) -> None:  # noqa: D102
        return None


class ScreeningGrid(Grid):
    """``grid`` with every masked-vector reply checked by ``problem_of`` first; a reply with a problem is dropped."""

    def __init__(self, grid: Grid, problem_of: Callable[[int, Message], str | None]) -> None:
        self.grid = grid
        self.problem_of = problem_of
        self.dropped: dict[int, str] = {}
        self.bytes_up: dict[int, int] = {}

    def set_run(self, run: Any) -> None:  # noqa: D102 - the Grid interface, delegated
        self.grid.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:  # noqa: D102
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:  # noqa: D102
        kept = []
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if not reply.has_error() and Key.MASKED_PARAMETERS in reply.content.config_records.get(RECORD_KEY_CONFIGS, {}):
                problem = self.problem_of(node, reply)
                if problem:
                    self.dropped[node] = problem
                    continue
                self.bytes_up[node] = int(sum(len(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]))
            kept.append(reply)
        return kept


class SecAggPlus(SecAggPlusWorkflow):
    """Flower's ``SecAggPlusWorkflow``, with a site that never answered the setup or key-sharing stage left out.

    In Flower 1.42 the unmask stage treats every node *sampled at setup* that is not active as a
    dropout whose masks must be removed, and asks the others for their shares of its key. A node
    that died before it shared keys has no such shares (no mask was ever made with it), so the other
    sites fail with a missing share and the whole round halts. Narrowing the sampled set to the nodes
    that completed the key sharing keeps the protocol's dropout recovery for the sites that die later
    (their masks are in the sum and are removed from their neighbours' shares).
    """

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:  # noqa: D102 - Flower's stage
        ok = super().setup_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:  # noqa: D102
        ok = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok


@dataclass
class SecureRequest:
    """One secure round: the sites (node id -> name), the train config, the tensors sent, the layout and per node its slots."""

    sites: dict[int, str]
    config: dict[str, Any]
    sent: dict[str, np.ndarray]
    layout: SecureLayout
    slots: dict[int, dict[str, int]]
    base: str
    adapters: list[str]
    timeout: float
    round_number: int


@dataclass
class SecureOutcome:
    """The secure sum read back as group means, the sites that were summed (their clear parts; no tensors) and those dropped."""

    groups: list[tuple[str, dict[str, np.ndarray], dict[str, float]]] = field(default_factory=list)
    replies: list[SiteUpdate] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)


def secure_problem(request: SecureRequest) -> Callable[[int, Message], str | None]:
    """The check of a masked reply's clear parts against ``request`` (None: fine)."""
    expected = [(1,)] + request.layout.vector_shapes()

    def problem(node: int, reply: Message) -> str | None:
        counts, _, base, layout = read_clear_metrics(reply.content.config_records.get("fitres.metrics", {}))
        if base != request.base:
            return f"base fingerprint {base[:12]!r} differs from the server's {request.base[:12]!r}"
        if layout != request.layout.digest():
            return "its masked vector follows another layout than the one sent"
        if set(counts) - set(request.adapters) or any(not isinstance(v, int) or v < 0 for v in counts.values()):
            return f"sample counts {counts} are not non-negative integers for this round's adapters {request.adapters}"
        try:
            shapes = [tuple(bytes_to_ndarray(b).shape) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        except (ValueError, TypeError) as exc:
            return f"its masked vector cannot be read ({exc})"
        if shapes != [tuple(s) for s in expected]:
            return f"its masked vector has {len(shapes)} arrays, not the layout's {len(expected)} of the expected shapes"
        return None

    return problem


def run_secure_round(grid: Grid, request: SecureRequest) -> SecureOutcome:
    """Run SecAgg+ for one round over ``grid``; an empty ``groups`` means the protocol halted (too few sites)."""
    nodes = sorted(request.sites)
    if len(nodes) < 2:
        raise FederationError(f"secure aggregation needs at least 2 sites in a round; {len(nodes)} connected.")
    screening = ScreeningGrid(grid, secure_problem(request))
    try:
        run_id = int(grid.run.run_id)
    except (AttributeError, ValueError, TypeError):
        run_id = 0
    params = ndarrays_to_parameters([request.sent[n] for n in request.layout.names])
    fitins = {
        node: FitIns(params, {**request.config, LAYOUT_KEY: request.layout.to_json(), SLOTS_KEY: json.dumps(request.slots.get(node, {}))})
        for node in nodes
    }
    proxies = {node: GridClientProxy(node, screening, run_id) for node in nodes}
    clients = SimpleClientManager()
    for proxy in proxies.values():
        clients.register(proxy)
    strategy = RoundStrategy(fitins, proxies)
    context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=strategy, client_manager=clients)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: request.round_number})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(params, keep_input=True)
    workflow = SecAggPlus(
        num_shares=1.0,  # every site is every other site's neighbour (cross-silo: a handful of hospitals)
        reconstruction_threshold=max(2, len(nodes) // 2 + 1),  # a majority: the server never gets both secrets of a site
        max_weight=1.0,  # each site's weight travels inside its vector (per adapter), so SecAgg+'s own weight is 1
        clipping_range=request.layout.clipping_range,
        quantization_range=QUANTIZATION_RANGE,
        timeout=request.timeout,
    )
    workflow(screening, context)
    outcome = SecureOutcome(dropped=dict(screening.dropped))
    if strategy.mean is None:
        return outcome
    total = [np.asarray(a, np.float64) * len(strategy.metrics) for a in strategy.mean]  # the workflow divides by the number of sites
    outcome.groups = request.layout.group_means(total, request.sent)
    for node, metrics in strategy.metrics.items():
        counts, loss, base, _ = read_clear_metrics(metrics)
        outcome.replies.append(SiteUpdate(request.sites[node], node, {}, counts, base, loss, screening.bytes_up.get(node, 0)))
    return outcome
