"""An in-process Flower ``Grid`` for simulation and tests: every site is a ``ClientApp`` called in this process.

Flower 1.42's own simulation runtime needs Ray, which is not a medadapt dependency (too heavy for
CI), so ``recipes/federated.py`` runs the same ``ServerApp`` logic and the same ``ClientApp``
(with its mods) through this Grid: messages are deep-copied both ways as if serialised, a site that
raises answers with a Flower error reply (as a SuperNode does), and a site marked dead never answers.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any, Callable

from .extra import require_flwr

require_flwr()

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.run import Run  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

logger = logging.getLogger(__name__)
Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


class LocalGrid(Grid):
    """Delivers messages to ``nodes`` (``{node_id: (client_app, context, mods)}``) synchronously."""

    def __init__(self, nodes: dict[int, tuple[Any, Context, list[Mod]]], run_id: int = 1) -> None:
        self.nodes = nodes
        self.dead: set[int] = set()
        self._replies: dict[str, Message] = {}
        self._count = 0
        self._run_id = run_id
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:  # noqa: D102 - the Grid interface
        self._run_id = run.run_id

    @property
    def run(self) -> Run:  # noqa: D102
        return Run.create_empty(self._run_id)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:  # noqa: D102
        return Message(copy.deepcopy(content), dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return sorted(n for n in self.nodes if n not in self.dead)

    def _call(self, node: int, message: Message) -> Message:
        app, context, mods = self.nodes[node]

        def call(msg: Message, ctx: Context) -> Message:
            return app(msg, ctx)

        for mod in reversed(mods):
            call = (lambda m, c, mod=mod, nxt=call: mod(m, c, nxt))
        try:
            reply = call(copy.deepcopy(message), context)
        except Exception as exc:  # noqa: BLE001 - a site's failure becomes its error reply, as on a SuperNode
            logger.error("site node %s raised: %s", node, exc)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>"), reply_to=message)
        return copy.deepcopy(reply)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        ids = []
        for message in messages:
            self._count += 1
            key = f"local-{self._count}"  # Flower's own grids use the message's object id; any unique key works here
            node = message.metadata.dst_node_id
            if node in self.nodes and node not in self.dead:
                self._replies[key] = self._call(node, message)
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:  # noqa: D102
        return self.pull_messages(self.push_messages(messages))
