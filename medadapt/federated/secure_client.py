"""A site's side of secure aggregation and DP clipping: the Flower mods medadapt's ClientApp runs.

Under ``federation.privacy.secure_aggregation`` the server runs Flower's SecAgg+ workflow, whose
train messages carry a legacy ``FitIns`` (``fitins.parameters`` / ``fitins.config``) and the
protocol's own config record. :func:`secure_aggregation_mod` hands those to Flower's
``secaggplus_mod``; on the stage that trains, the site's plain ``FitRes`` (its trained tensors) is
first clipped (Flower's legacy ``fixedclipping_mod``, when DP is on) and then packed into the
per-adapter weighted vector of :mod:`.secure_layout`, which ``secaggplus_mod`` quantises and masks.
Plain (Message API) train messages pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .extra import require_flwr

require_flwr()

from flwr.app import Context, Message, MessageType, RecordDict  # noqa: E402
from flwr.client.mod import fixedclipping_mod as legacy_fixedclipping_mod  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.clientapp.mod import fixedclipping_mod  # noqa: E402
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS  # noqa: E402
from flwr.compat.common import recorddict_compat as compat  # noqa: E402

from ..errors import FederationError  # noqa: E402
from .messages import CLIPPING_NORM_KEY, config_of  # noqa: E402
from .secure_layout import SecureLayout  # noqa: E402
from .messages import LAYOUT_KEY, SLOTS_KEY, clear_metrics, read_clear_metrics  # noqa: E402

Next = Callable[[Message, Context], Message]
FITINS_CONFIG = "fitins.config"


def is_train(msg: Message) -> bool:
    """Whether ``msg`` is a train message (``train`` or ``train.<name>``)."""
    return msg.metadata.message_type.split(".")[0] == MessageType.TRAIN


def is_secure_train(content: RecordDict) -> bool:
    """Whether a train message is SecAgg+'s (a legacy FitIns from the secure workflow)."""
    return FITINS_CONFIG in content.config_records


def secure_train_request(content: RecordDict) -> tuple[dict[str, Any], dict[str, Any], SecureLayout]:
    """(train config, received tensors by name, layout) of a secure train message."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    layout = SecureLayout.from_json(str(fitins.config.get(LAYOUT_KEY, "")))
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) != len(layout.names):
        raise FederationError(f"the secure train message carries {len(arrays)} tensors for a layout of {len(layout.names)}.")
    return dict(fitins.config), dict(zip(layout.names, arrays)), layout


def secure_train_reply(tensors: dict[str, Any], counts: dict[str, int], loss: float, base: str, layout: SecureLayout) -> RecordDict:
    """The plain FitRes of a secure round (trained tensors in layout order); the mods clip and pack it."""
    missing = sorted(set(layout.names) - set(tensors))
    if missing:
        raise FederationError(f"this site has no tensors {missing[:3]} that the secure layout names.")
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([tensors[n] for n in layout.names]), 1, clear_metrics(counts, loss, base, layout.digest()))
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def pack_reply(msg: Message, reply: Message) -> Message:
    """Replace the plain trained tensors of ``reply`` by this site's weighted vector (:meth:`SecureLayout.pack`)."""
    if reply.has_error():
        return reply
    config, received, layout = secure_train_request(msg.content)
    slots = {str(k): int(v) for k, v in json.loads(str(config.get(SLOTS_KEY, "{}"))).items()}
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    counts = read_clear_metrics(fitres.metrics)[0]
    vector = layout.pack(parameters_to_ndarrays(fitres.parameters), [received[n] for n in layout.names], counts, slots)
    fitres.parameters = ndarrays_to_parameters(vector)
    fitres.num_examples = 1  # SecAgg+'s own weight; the real ones travel inside the vector
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=True)
    return reply


def secure_aggregation_mod(msg: Message, context: Context, call_next: Next) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ train messages (packing the trained tensors first); others pass."""
    if not (is_train(msg) and RECORD_KEY_CONFIGS in msg.content.config_records):
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: pack_reply(m, call_next(m, c)))


def dp_clipping_mod(msg: Message, context: Context, call_next: Next) -> Message:
    """Flower's fixed-clipping mod on train messages that carry a clipping norm (the legacy one for SecAgg+'s FitIns)."""
    if is_train(msg):
        if is_secure_train(msg.content):
            if CLIPPING_NORM_KEY in msg.content.config_records[FITINS_CONFIG]:
                return legacy_fixedclipping_mod(msg, context, call_next)
        elif CLIPPING_NORM_KEY in config_of(msg.content):
            return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
