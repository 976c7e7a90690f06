"""Visual question answering data: images with their own question and free-text answer.

:class:`VQADataset` is an :class:`~medadapt.data.base.ImageLabelDataset` whose samples also carry
a question and an answer. A *closed* domain (declared ``labels``, e.g. ``["no", "yes"]``) keeps the
samples whose answer is one of the labels and scores them like any classification domain, asking
each sample's own question. An *open* domain (no labels, ``task: vqa``) keeps every sample; its
labels are ``-1`` and it is evaluated by generating answers.

The ``vqa_rad`` data format reads VQA-RAD (``path``: the folder with ``images/`` and
``mevf_split/``) with the published MEVF train/test split; ``options``: ``answer_type``
(``closed`` / ``open``), ``question_type`` and ``organ`` filters (see
:func:`medadapt.data.vqa_rad.load_vqa_rad`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..vqa_metrics import normalize_answer
from .base import DataConfig, DomainData, ImageLabelDataset
from .registry import register_loader
from .vqa_rad import load_vqa_rad

OPEN_LABEL = -1  # the label of a sample whose answer is free text


class VQADataset(ImageLabelDataset):
    """Images, labels (``-1`` for free-text answers), and each sample's question and answer."""

    def __init__(self, images: Any, labels: Sequence[int] | np.ndarray, questions: Sequence[str], answers: Sequence[str]) -> None:
        super().__init__(images, labels)
        if not (len(questions) == len(answers) == len(self.labels)):
            raise DataError(f"{len(self.labels)} images but {len(questions)} questions and {len(answers)} answers: counts must match")
        for i, (q, a) in enumerate(zip(questions, answers)):
            if not isinstance(q, str) or not q.strip():
                raise DataError(f"VQA sample {i} has no question (got {q!r}).")
            if not isinstance(a, str) or not a.strip():
                raise DataError(f"VQA sample {i} has no answer (got {a!r}); every training and test sample needs one.")
        self.questions = [str(q) for q in questions]
        self.answers = [str(a) for a in answers]

    def subset(self, indices: Sequence[int] | np.ndarray) -> "VQADataset":
        base = super().subset(indices)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return VQADataset(base.images, base.labels, [self.questions[k] for k in idx], [self.answers[k] for k in idx])

    @property
    def open_ended(self) -> bool:
        """Whether answers are free text (no label set)."""
        return bool(len(self.labels)) and bool((self.labels == OPEN_LABEL).all())


def vqa_dataset(samples: Sequence[Any], labels: list[str], where: str) -> VQADataset:
    """A dataset from records with ``image_path``, ``question`` and ``answer``; closed when ``labels`` are given."""
    if labels:
        index = {normalize_answer(label): i for i, label in enumerate(labels)}
        samples = [s for s in samples if normalize_answer(s.answer) in index]
        ids = [index[normalize_answer(s.answer)] for s in samples]
    else:
        ids = [OPEN_LABEL] * len(samples)
    if not samples:
        raise DataError(f"{where}: no sample has an answer among the labels {labels}." if labels else f"{where}: no samples.")
    images = [str(s.image_path) for s in samples]
    return VQADataset(images, np.asarray(ids, dtype=np.int64), [s.question for s in samples], [s.answer for s in samples])


@register_loader("vqa_rad")
def load_vqa_rad_domain(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """VQA-RAD questions (MEVF split), closed when ``labels`` are declared, open otherwise."""
    if not cfg.path:
        raise DataError(f"domain {name!r}: data format 'vqa_rad' needs 'path' (the VQA-RAD folder)")
    options = dict(cfg.options or {})
    unknown = sorted(set(options) - {"answer_type", "question_type", "organ"})
    if unknown:
        raise DataError(f"domain {name!r}: unknown vqa_rad options {unknown}; valid: answer_type, question_type, organ")
    splits = {}
    for split, source in cfg.splits.items():
        samples = load_vqa_rad(Path(cfg.path), source, **options)
        splits[split] = vqa_dataset(samples, labels, f"domain {name!r} split {split!r}")
    return DomainData(name=name, labels=list(labels), splits=splits)
