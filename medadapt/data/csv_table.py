"""Reading a data CSV (labels, file lists) with a clear error for a file in another encoding.

CSV files are read as UTF-8 (a byte-order mark is skipped). Spreadsheet exports are often in
another encoding (latin-1 / cp1252 on Windows): such a file is refused with the line and byte that
fail and the fix, ``options: {encoding: latin-1}`` (any codec Python knows), never read as garbage.
"""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

from .base import DataError

__all__ = ["DEFAULT_ENCODING", "read_csv_rows"]

#: The encoding a CSV is read with when the domain's ``options.encoding`` is not given.
DEFAULT_ENCODING = "utf-8-sig"


def read_csv_rows(path: str | Path, domain: str, encoding: object = None) -> list[dict[str, str]]:
    """The rows of the CSV ``path`` as dicts (header line = keys), decoded with ``encoding`` (default UTF-8).

    Raises :class:`DataError` naming the file, the line and the option to set when the bytes are not
    valid in that encoding, or when ``encoding`` is not a codec name.
    """
    path = Path(path)
    codec = DEFAULT_ENCODING if encoding is None else encoding
    try:
        known = isinstance(codec, str) and codecs.lookup(codec) is not None
    except LookupError:
        known = False
    if not known:
        raise DataError(f"domain {domain!r}: data option 'encoding' must be a codec name such as 'utf-8' or 'latin-1', got {encoding!r}")
    data = path.read_bytes()
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"domain {domain!r}: {path} is not valid {codec.replace('-sig', '')}: byte {data[exc.start:exc.start + 1]!r} "
            f"on line {line} ({exc.reason}). Save it as UTF-8, or give its encoding: options: {{encoding: latin-1}} "
            "(cp1252 for Windows spreadsheet exports)."
        ) from exc
    return list(csv.DictReader(text.splitlines()))
