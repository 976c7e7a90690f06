"""Deterministic batches: which samples each process sees at each step, with rehearsal replay.

Every random choice is derived from ``(seed, phase, epoch or step)``, so a resumed run sees exactly
the batches the interrupted one would have seen, and all processes agree without communicating:
each builds the same global batch and keeps the rows ``rank::world_size``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..rehearsal import RehearsalBuffer, replay_count
from .objectives import Batch

Ref = tuple[str, int]  # (domain, index into its train split)


def _rng(*keys: Any) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


class PixelStore:
    """Preprocessed pixel values per (domain, split): computed once when small, else per batch."""

    def __init__(self, preprocess: Callable[[list[Any]], torch.Tensor], budget_bytes: int = 1 << 30) -> None:
        self.preprocess = preprocess
        self.budget = budget_bytes
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self._datasets: dict[tuple[str, str], Any] = {}

    def register(self, domain: str, split: str, dataset: Any) -> None:
        self._datasets[(domain, split)] = dataset

    def dataset(self, domain: str, split: str) -> Any:
        return self._datasets[(domain, split)]

    def _maybe_cache(self, key: tuple[str, str]) -> torch.Tensor | None:
        if key in self._cache:
            return self._cache[key]
        dataset = self._datasets[key]
        probe = self.preprocess([dataset[0][0]])
        if probe.numel() * probe.element_size() * len(dataset) > self.budget:
            return None
        chunks = [
            self.preprocess([dataset[i][0] for i in range(start, min(start + 256, len(dataset)))])
            for start in range(0, len(dataset), 256)
        ]
        self._cache[key] = torch.cat(chunks)
        return self._cache[key]

    def warm(self, domains: Sequence[str], split: str = "train") -> None:
        """Build the pixel cache of ``domains`` now (before DataLoader workers fork, so they share it)."""
        for domain in domains:
            self._maybe_cache((domain, split))

    def pixels(self, domain: str, split: str, indices: Sequence[int]) -> torch.Tensor:
        cached = self._maybe_cache((domain, split))
        if cached is not None:
            return cached[torch.as_tensor(list(indices), dtype=torch.long)]
        dataset = self._datasets[(domain, split)]
        return self.preprocess([dataset[int(i)][0] for i in indices])

    def labels(self, domain: str, split: str) -> np.ndarray:
        return np.asarray(self._datasets[(domain, split)].labels)

    def batch(self, refs: Sequence[Ref], split: str = "train") -> Batch:
        """Assemble a :class:`Batch` for ``refs`` (grouped per domain for cached gathers)."""
        order: dict[str, list[int]] = {}
        for pos, (domain, _) in enumerate(refs):
            order.setdefault(domain, []).append(pos)
        pixels: list[torch.Tensor | None] = [None] * len(refs)
        for domain, positions in order.items():
            values = self.pixels(domain, split, [refs[p][1] for p in positions])
            for row, p in enumerate(positions):
                pixels[p] = values[row]
        labels = torch.tensor([int(self.labels(d, split)[i]) for d, i in refs], dtype=torch.long)
        questions = [self.question(d, split, i) for d, i in refs]
        answers = [self.answer(d, split, i) for d, i in refs]
        return Batch(
            torch.stack(pixels), labels, [d for d, _ in refs],  # type: ignore[arg-type]
            questions if any(q is not None for q in questions) else None,
            answers if any(a is not None for a in answers) else None,
            [(d, int(i)) for d, i in refs] if split == "train" else None,
        )

    def question(self, domain: str, split: str, index: int) -> str | None:
        """Sample ``index``'s own question (VQA data), or None when it uses its domain's."""
        questions = getattr(self._datasets[(domain, split)], "questions", None)
        return questions[int(index)] if questions is not None else None

    def questions(self, domain: str, split: str, indices: Sequence[int]) -> list[str] | None:
        """The samples' own questions (VQA data), or None when they use their domain's."""
        asked = [self.question(domain, split, i) for i in indices]
        return asked if asked and all(q is not None for q in asked) else None

    def answer(self, domain: str, split: str, index: int) -> str | None:
        """Sample ``index``'s free-text answer (VQA data), or None when its label is the answer."""
        answers = getattr(self._datasets[(domain, split)], "answers", None)
        return answers[int(index)] if answers is not None else None


@dataclass
class BatchSchedule:
    """Global batches of one phase: ``steps`` in all, ``batch_size`` rows per process."""

    pool: list[Ref]
    batch_size: int
    epochs: int
    seed: int
    phase_key: str
    world_size: int = 1
    rank: int = 0
    max_steps: int | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.pool) / self.global_batch))

    @property
    def steps(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def refs(self, step: int, buffer: RehearsalBuffer | None = None, ratio: float = 0.0) -> list[Ref]:
        """This process's rows at ``step``: new samples, then replayed ones when a buffer is given."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = _rng(self.seed, self.phase_key, "epoch", epoch).permutation(len(self.pool))
        chosen = perm[within * self.global_batch : (within + 1) * self.global_batch]
        if len(chosen) < self.global_batch:  # last batch: top up from the start (cyclically) so all ranks get rows
            chosen = np.concatenate([chosen, np.resize(perm, self.global_batch - len(chosen))])
        rows = [self.pool[int(i)] for i in chosen]
        if buffer is not None and len(buffer) and ratio > 0:
            k = replay_count(self.global_batch, ratio)
            replay = buffer.sample(k, _rng(self.seed, self.phase_key, "replay", step))
            rows += [(d, i) for d, i, _ in replay]
        return rows[self.rank :: self.world_size]


class ScheduleSampler(torch.utils.data.Sampler):
    """A :class:`BatchSchedule` as a DataLoader sampler: yields each step's rows from ``start`` on."""

    def __init__(self, schedule: BatchSchedule, start: int, buffer: RehearsalBuffer | None, ratio: float) -> None:
        self.schedule, self.start, self.buffer, self.ratio = schedule, start, buffer, ratio

    def __len__(self) -> int:
        return self.schedule.steps - self.start

    def __iter__(self) -> Any:
        for step in range(self.start, self.schedule.steps):
            yield self.schedule.refs(step, self.buffer, self.ratio)


class _RefsDataset(torch.utils.data.Dataset):
    """Indexed by one step's rows (a list of refs); returns that step's :class:`Batch`."""

    def __init__(self, store: PixelStore) -> None:
        self.store = store

    def __getitem__(self, refs: Sequence[Ref]) -> Batch:  # type: ignore[override]
        return self.store.batch(refs)


def _as_is(batch: Batch) -> Batch:
    return batch


def phase_batches(store: PixelStore, schedule: BatchSchedule, start: int, buffer: RehearsalBuffer | None, ratio: float, workers: int) -> Any:
    """The phase's batches from step ``start`` on, in the schedule's order: assembled in this process
    (``workers`` 0) or by a ``torch.utils.data.DataLoader`` with ``workers`` processes (same batches, same order)."""
    if workers == 0:
        return (store.batch(schedule.refs(step, buffer, ratio)) for step in range(start, schedule.steps))
    import multiprocessing

    store.warm(sorted({d for d, _ in schedule.pool} | set(buffer.domains() if buffer is not None else [])))
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return torch.utils.data.DataLoader(
        _RefsDataset(store), sampler=ScheduleSampler(schedule, start, buffer, ratio), batch_size=None,
        collate_fn=_as_is, num_workers=workers, multiprocessing_context=context, persistent_workers=False,
    )
