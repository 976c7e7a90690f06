"""What a local base-model folder must hold (safetensors weights), and loading a saved base quietly.

medadapt never unpickles a file, so a local folder whose weights are only ``pytorch_model.bin`` (or
another pickle) is refused with a clear error before transformers is asked, instead of transformers'
raw ``OSError``. A base medadapt saved itself (``base/`` in a save) is loaded without transformers'
"Loading weights" progress bars: it is small or local, and the bars would print on every load.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import StageFileError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def require_safetensors(source: str | os.PathLike) -> None:
    """Raise :class:`StageFileError` when the local folder ``source`` holds no ``.safetensors`` weights.

    Hub ids (anything that is not a local folder) are left to the loader.
    """
    folder = Path(source)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        return
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    found = f"it holds {pickles}, pickled weights" if pickles else "it holds no weights file"
    raise StageFileError(
        f"{folder}: no .safetensors weights ({found}). medadapt loads safetensors only and never unpickles a "
        "file; convert the weights once where you trust them (e.g. load the model with transformers and "
        "`model.save_pretrained(folder, safe_serialization=True)`), then load the converted folder."
    )


@contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """Silence transformers' progress bars (e.g. "Loading weights") for the block, then restore them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
