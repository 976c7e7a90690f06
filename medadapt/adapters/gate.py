"""Who may use a model's adapters at the same time: served calls together, changes alone, training apart.

Served calls (``predict_proba``, ``embed_images``, ``generate``...) read the adapters and run
concurrently from any number of threads; what each row is served by is call-local (see
:mod:`.per_call`), so they never wait for each other. A change to the adapter set (adding,
loading, removing, reloading weights) waits until the calls in flight have finished, on the set
they started with, then runs alone; calls arriving meanwhile wait for it and see the new set
(a waiting change goes before new calls, so a steady stream of calls cannot starve it).

Training changes adapter weights at every step, so it is refused while another thread serves,
and serving (or changing adapters) from another thread is refused while a model trains: both with
a :class:`~medadapt.errors.ServingError` naming the fix. The training thread itself may serve
(evaluation between stages).
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from ..errors import ServingError

F = TypeVar("F", bound=Callable[..., Any])


class AdapterGate:
    """A readers-writer gate, re-entrant for both, that gives waiting writers priority."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread id -> depth of served calls it runs
        self._writer: int | None = None
        self._writer_depth = 0
        self._writers_waiting = 0
        self._trainer: int | None = None

    @property
    def in_flight(self) -> int:
        """Threads running a served call now."""
        return len(self._readers)

    def _refuse_if_training(self, me: int, what: str) -> None:
        if self._trainer is not None and self._trainer != me:
            raise ServingError(
                f"cannot {what} while this model trains in another thread (its adapters change at every step). "
                "Serve a copy loaded with ContinualVLM.from_pretrained, or wait until training ends "
                "(model.set_trainable([]))."
            )

    @contextmanager
    def serving(self) -> Iterator[None]:
        """A served call: runs alongside other calls, never alongside a change to the adapters."""
        me = threading.get_ident()
        with self._cond:
            self._refuse_if_training(me, "serve")
            if not (self._readers.get(me) or self._writer == me):  # re-entrant: no wait inside one's own call
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._refuse_if_training(me, "serve")
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                depth = self._readers.pop(me) - 1
                if depth:
                    self._readers[me] = depth
                else:
                    self._cond.notify_all()

    @contextmanager
    def changing(self) -> Iterator[None]:
        """A change to the adapter set: waits for calls in flight, then runs alone."""
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._writer_depth += 1
            else:
                self._refuse_if_training(me, "change the adapters")
                if self._readers.get(me):
                    raise ServingError(
                        "cannot add, load or remove adapters from inside a served call on the same model "
                        "(it would wait for itself); do it before or after the call."
                    )
                self._writers_waiting += 1
                try:
                    while self._writer is not None or self._readers:
                        self._cond.wait()
                finally:
                    self._writers_waiting -= 1
                self._writer, self._writer_depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                    self._cond.notify_all()

    def _others_serving(self, me: int) -> int:
        """Threads other than ``me`` running a served call now (call with ``self._cond`` held)."""
        return sum(1 for t in self._readers if t != me)

    def refuse_while_others_serve(self, what: str) -> None:
        """Raise :class:`ServingError` if a thread other than this one runs a served call now."""
        with self._cond:
            busy = self._others_serving(threading.get_ident())
        if busy:
            raise ServingError(
                f"cannot {what} while {busy} other thread(s) serve this model: it flips module state "
                "that their calls read (dropout on). Do it before serving starts, or on a separate copy "
                "(ContinualVLM.from_pretrained)."
            )

    def set_training(self, training: bool) -> None:
        """Mark this thread as training the model (``True``) or done (``False``).

        Refused while another thread runs a served call, or trains."""
        me = threading.get_ident()
        with self._cond:
            if not training:
                if self._trainer == me:
                    self._trainer = None
                    self._cond.notify_all()
                return
            if self._trainer not in (None, me):
                raise ServingError("this model already trains in another thread; train one model per thread.")
            busy = self._others_serving(me)
            if busy:
                raise ServingError(
                    f"cannot train this model while it serves: {busy} other thread(s) are running predict_proba/"
                    "generate/embed_images calls on it, and training changes its adapters at every step. Train a "
                    "separate copy (ContinualVLM.from_pretrained) and load the result with load_adapter."
                )
            self._trainer = me


def served(method: F) -> F:
    """Decorate a model method as a served call (``self.adapters.gate.serving()``)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.adapters.gate.serving():
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


def changes_adapters(method: F) -> F:
    """Decorate a model method that changes the adapter set (``self.adapters.gate.changing()``)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.adapters.gate.changing():
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]
