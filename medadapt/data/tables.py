"""Tables of samples as ``datasets.Dataset`` objects: read from CSV/JSONL/JSON files, and split into
medadapt's splits by a ``split`` column or by one table per split.

Used by the ``hf`` and ``vqa`` formats, for files, ``save_to_disk`` folders, Hub datasets and in-memory
``Dataset``/``DatasetDict`` objects alike.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError, DataNotFoundError

__all__ = ["TABLE_SUFFIXES", "read_table", "table_dataset", "split_tables", "is_saved_dataset"]

#: File types read as tables of samples.
TABLE_SUFFIXES = (".csv", ".jsonl", ".json")


def read_table(path: Path, domain: str) -> dict[str, list[Any]]:
    """Columns of a CSV (header row), JSONL (one object a line) or JSON (a list of objects) file."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"domain {domain!r}: cannot read {path}: {exc}") from exc
    if suffix == ".csv":
        rows: list[Any] = list(csv.DictReader(text.splitlines()))
    elif suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"domain {domain!r}: {path} is not JSON Lines: {exc}") from exc
    elif suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"domain {domain!r}: {path} is not JSON: {exc}") from exc
    else:
        raise DataError(f"domain {domain!r}: {path} is not a table file ({', '.join(TABLE_SUFFIXES)}).")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"domain {domain!r}: {path} must hold one object (a mapping of column -> value) per sample.")
    if not rows:
        raise DataError(f"domain {domain!r}: {path} holds no samples.")
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {n: [r.get(n) for r in rows] for n in names}


def table_dataset(path: Path, domain: str, image_column: str | None = None) -> Any:
    """A ``datasets.Dataset`` of a table file; relative paths in ``image_column`` are taken from the file's folder."""
    import datasets

    columns = read_table(path, domain)
    if image_column in columns:
        columns[image_column] = [
            str(path.parent / v) if isinstance(v, str) and v and not os.path.isabs(v) else v for v in columns[image_column]
        ]
    return datasets.Dataset.from_dict(columns)


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds a ``save_to_disk`` Dataset or DatasetDict."""
    return (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file()


def folder_tables(folder: Path, sources: list[str], domain: str, image_column: str | None) -> dict[str, Any]:
    """One table file per split source in ``folder``: ``<source>`` itself (``train.csv``) or ``<source>.csv|.jsonl|.json``."""
    tables = {}
    for source in dict.fromkeys(sources):
        tried = [folder / source] if source.lower().endswith(TABLE_SUFFIXES) else [folder / f"{source}{s}" for s in TABLE_SUFFIXES]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise DataNotFoundError(f"domain {domain!r}: no table for split {source!r} in {folder}; looked for {[p.name for p in tried]}.")
        tables[source] = table_dataset(found, domain, image_column)
    return tables


def split_tables(source: Any, splits: dict[str, str], split_column: str, domain: str, where: str) -> dict[str, Any]:
    """``{medadapt split: datasets.Dataset}`` from a DatasetDict (or a dict of Datasets) by split name, or from
    one Dataset by its ``split_column`` (rows whose value is the split's source name)."""
    import datasets

    if isinstance(source, list) and source and all(isinstance(r, dict) for r in source):
        source = datasets.Dataset.from_list(source)
    if isinstance(source, (datasets.DatasetDict, dict)):
        out = {}
        for split, src in splits.items():
            if src not in source:
                raise DataError(f"domain {domain!r} split {split!r}: split {src!r} not in {where}; available: {sorted(source)}")
            out[split] = source[src]
        return out
    if isinstance(source, datasets.Dataset):
        if split_column not in source.column_names:
            raise DataError(
                f"domain {domain!r}: {where} is a single Dataset without a {split_column!r} column; give a DatasetDict "
                f"with splits {sorted(set(splits.values()))}, one table per split, or a split column (data.columns.split names it)."
            )
        values = [str(v) for v in source[split_column]]
        out = {}
        for split, src in splits.items():
            rows = [i for i, v in enumerate(values) if v == src]
            if not rows:
                raise DataError(f"domain {domain!r} split {split!r}: no row of {where} has {split_column} == {src!r}; values found: {sorted(set(values))}")
            out[split] = source.select(rows)
        return out
    raise DataError(f"domain {domain!r}: {where} must be a datasets Dataset or DatasetDict (or a list of row dicts), got {type(source).__name__}.")
