"""The generic ``vqa`` data format: any table of images with a question and an answer each.

SLAKE, PathVQA or your own reports: a CSV, JSONL or JSON file, a folder with one such file per split
(``train.csv``, ``test.jsonl``, ...), a ``save_to_disk`` folder, a Hub dataset (``dataset:``), or an
in-memory ``datasets.Dataset``/``DatasetDict`` given to the trainer. Column names are configurable::

    data:
      format: vqa
      path: slake/all.jsonl                       # one table with a split column ...
      columns: {image: img_name, question: question, answer: answer, split: split}
      splits: {train: train, test: test}          # medadapt split -> value of the split column (or table name)

Images are file paths (relative to the table's folder), ``datasets`` Image cells or PIL images. As in the
``vqa_rad`` format, a domain with ``labels`` is *closed* (keeps rows whose answer is a label, scored as
classification) and one without (``task: vqa``) is *open* (free-text answers, generated and scored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..vqa_metrics import normalize_answer
from .base import DataConfig, DomainData
from .files import FileOptions
from .loaders import HFImageColumn, require_path
from .registry import register_loader, register_memory_loader
from .tables import TABLE_SUFFIXES, folder_tables, is_saved_dataset, split_tables, table_dataset
from .vqa import OPEN_LABEL, VQADataset

__all__ = ["VQA_COLUMNS", "load_vqa_table", "vqa_from_tables"]

#: Default column names of the ``vqa`` format (override any with ``data.columns``).
VQA_COLUMNS = {"image": "image", "question": "question", "answer": "answer", "split": "split"}


def _columns(cfg: DataConfig) -> dict[str, str]:
    given = {k: v for k, v in cfg.columns.items() if k != "label" and not (k == "image" and v == "image")}
    return {**VQA_COLUMNS, **given}


def _source(name: str, cfg: DataConfig, columns: dict[str, str]) -> tuple[Any, str]:
    if cfg.path:
        raw = Path(str(cfg.path)).expanduser()
        p = require_path(cfg.path, "VQA table or folder", name, is_dir=raw.is_dir())
        if p.is_file():
            if p.suffix.lower() not in TABLE_SUFFIXES:
                raise DataError(f"domain {name!r}: {p} is not a table ({', '.join(TABLE_SUFFIXES)}) or a folder.")
            return table_dataset(p, name, columns["image"]), str(p)
        if is_saved_dataset(p):
            import datasets

            try:
                return datasets.load_from_disk(str(p)), str(p)
            except Exception as exc:  # noqa: BLE001 - datasets raises many types
                raise DataError(f"domain {name!r}: cannot load the dataset saved at {p}: {exc}") from exc
        return folder_tables(p, list(cfg.splits.values()), name, columns["image"]), str(p)
    if cfg.dataset:
        import datasets

        try:
            return datasets.load_dataset(cfg.dataset, (cfg.options or {}).get("config")), str(cfg.dataset)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"domain {name!r}: cannot load Hugging Face dataset {cfg.dataset!r}: {exc}") from exc
    raise DataError(f"domain {name!r}: data format 'vqa' needs 'path' (a table file or folder) or 'dataset' (a Hub dataset), or an in-memory dataset.")


def vqa_from_tables(name: str, labels: list[str], cfg: DataConfig, source: Any, where: str) -> DomainData:
    """The domain's VQA splits from ``source`` (a Dataset with a split column, a DatasetDict, a dict of Datasets)."""
    columns = _columns(cfg)
    options = FileOptions(name, cfg.options or {}, extra_keys=("config",))
    tables = split_tables(source, dict(cfg.splits), columns["split"], name, where)
    index = {normalize_answer(label): i for i, label in enumerate(labels or [])}
    splits = {}
    for split, ds in tables.items():
        missing = [columns[k] for k in ("image", "question", "answer") if columns[k] not in ds.column_names]
        if missing:
            raise DataError(f"domain {name!r} split {split!r}: column(s) {missing} not in {where}; available columns: {ds.column_names} "
                            "(data.columns maps image/question/answer to your names).")
        questions = [q if q is None else str(q) for q in ds[columns["question"]]]
        answers = [a if a is None else str(a) for a in ds[columns["answer"]]]
        if labels:
            keep = [i for i, a in enumerate(answers) if a is not None and normalize_answer(a) in index]
            if not keep:
                raise DataError(f"domain {name!r} split {split!r}: no answer in {where} is one of the labels {labels}.")
            ids = [index[normalize_answer(answers[i])] for i in keep]
        else:
            keep, ids = list(range(len(answers))), [OPEN_LABEL] * len(answers)
        rows = ds.select(keep) if len(keep) != len(ds) else ds
        images = HFImageColumn(rows, columns["image"], options.window, options.frame)
        try:
            splits[split] = VQADataset(images, np.asarray(ids, dtype=np.int64), [questions[i] for i in keep], [answers[i] for i in keep])
        except DataError as exc:
            raise DataError(f"domain {name!r} split {split!r} ({where}): {exc}") from exc
    return DomainData(name=name, labels=list(labels or []), splits=splits)


@register_loader("vqa")
def load_vqa_table(name: str, labels: list[str], cfg: DataConfig) -> DomainData:
    """The ``vqa`` format from a file, a folder, a ``save_to_disk`` folder or a Hub dataset."""
    columns = _columns(cfg)
    source, where = _source(name, cfg, columns)
    return vqa_from_tables(name, labels, cfg, source, where)


@register_memory_loader("vqa")
def vqa_from_memory(name: str, labels: list[str], cfg: DataConfig, source: Any) -> DomainData:
    """The ``vqa`` format from an in-memory Dataset / DatasetDict / dict of Datasets / list of row dicts."""
    return vqa_from_tables(name, labels, cfg, source, "the in-memory dataset")
