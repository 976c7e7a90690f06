"""Training progress: a tqdm bar on a terminal, one summary line per phase anywhere else (logs, CI),
and library warnings that tell the user nothing kept out of the output."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any, TextIO

# warnings raised inside libraries about their own internals, not about anything the user can change
QUIET_WARNINGS = (
    (FutureWarning, r".*is_gradient_checkpointing.* is deprecated"),
)


def quiet_library_warnings() -> None:
    """Filter the library-internal deprecation warnings in :data:`QUIET_WARNINGS` (idempotent)."""
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class PhaseProgress:
    """Progress of one training phase: ``update(loss, rate)`` per step, ``close()`` at the end.

    ``interactive`` defaults to whether ``stream`` (stderr) is a terminal. On a terminal this is a tqdm
    bar; otherwise nothing is printed per step and ``close()`` prints a single line with the phase's
    steps, last loss, throughput and time.
    """

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = self._is_terminal() if interactive is None else interactive
        self.desc, self.total, self.initial = desc, total, initial
        self.done, self.loss, self.rate = initial, float("nan"), 0.0
        self.started = time.perf_counter()
        self.bar: Any = None
        if enabled and self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=True, file=self.stream)

    def _is_terminal(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def update(self, loss: float, rate: float) -> None:
        self.done += 1
        self.loss, self.rate = loss, rate
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", samples_s=f"{rate:.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            resumed = f" (resumed at step {self.initial})" if self.initial else ""
            print(
                f"{self.desc}: {self.done}/{self.total} steps{resumed}, loss {self.loss:.3f}, "
                f"{self.rate:.0f} samples/s, {time.perf_counter() - self.started:.1f} s",
                file=self.stream, flush=True,
            )
