"""Shared helpers for the training tests: tiny synthetic run configs and recipe subprocesses.

Everything uses the built-in tiny CLIP and tiny synthetic domains so a whole run takes seconds.
Subprocesses run with one intra-op thread: the tiny model gains nothing from more, and on a busy
2-core machine oversubscribed OpenMP threads make a run many times slower.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medadapt.training.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

# (name, synthetic kind, labels); names avoid substrings of "lora_" (peft warns about those)
TINY_DOMAINS = [
    ("xr", "xray", ["normal", "pneumonia"]),
    ("us", "ultrasound", ["normal", "benign lesion", "malignant lesion"]),
    ("fu", "fundus", ["healthy retina", "exudates", "hemorrhages"]),
]


def tiny_run(output_dir: str | Path, paradigm: str = "rehearsal", n_domains: int = 2, n_train: int = 40, n_test: int = 30, **sections: Any) -> dict[str, Any]:
    """A run config (as a plain dict) on ``n_domains`` tiny synthetic domains; ``sections`` update it."""
    data: dict[str, Any] = {
        "model": "tiny-clip",
        "paradigm": paradigm,
        "seed": 0,
        "output_dir": str(output_dir),
        "compare_naive": False,
        "adapter": {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "rehearsal": {"size": 16, "policy": "class_balanced", "ratio": 0.5},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.005, "checkpoint_every": 2, "eval_batch_size": 64},
        "domains": [
            {
                "name": name,
                "labels": labels,
                "prompt": f"a {kind} image showing {{}}",
                "data": {"format": "synthetic", "synthetic": {"kind": kind, "n_train": n_train, "n_test": n_test, "size": 16}},
            }
            for name, kind, labels in TINY_DOMAINS[:n_domains]
        ],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def tiny_config(output_dir: str | Path, paradigm: str = "rehearsal", overrides: list[str] | None = None, **kwargs: Any) -> RunConfig:
    return load_config(None, overrides or [], defaults=copy.deepcopy(tiny_run(output_dir, paradigm, **kwargs)))


def write_yaml(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def recipe_command(recipe: str, *args: str) -> list[str]:
    return [sys.executable, str(RECIPES / f"{recipe}.py"), *args]


def run_recipe(recipe: str, *args: str, timeout: float = 240, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(recipe_command(recipe, *args), cwd=cwd or ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """Run in-process training with one intra-op thread (import this fixture into a test module)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- data in each supported on-disk format (built from synthetic images) ------------------------------
def synthetic_arrays(kind: str = "xray", n: int = 12, n_classes: int = 2, split: str = "train"):
    from medadapt.data.synthetic import generate

    return generate(kind, n, n_classes=n_classes, size=16, seed=0, split=split)


def write_npz(path: str | Path, n: int = 12, n_classes: int = 2, labels_offset: int = 0, **extra: Any) -> Path:
    """MedMNIST-style npz with train/test splits; ``labels_offset`` shifts labels (out of range)."""
    import numpy as np

    arrays: dict[str, Any] = {}
    for split in ("train", "test"):
        images, labels = synthetic_arrays("xray", n, n_classes, split)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels + labels_offset
    arrays.update(extra)
    np.savez(path, **arrays)
    return Path(path)


def write_imagefolder(root: str | Path, labels: list[str], n: int = 12) -> Path:
    from PIL import Image

    root = Path(root)
    for split in ("train", "test"):
        images, ys = synthetic_arrays("fundus", n, len(labels), split)
        for i, (image, y) in enumerate(zip(images, ys)):
            folder = root / split / labels[int(y)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root


def write_hf(path: str | Path, labels: list[str], n: int = 12, image_column: str = "image") -> Path:
    import datasets
    from PIL import Image

    splits = {}
    for split in ("train", "test"):
        images, ys = synthetic_arrays("ultrasound", n, len(labels), split)
        features = datasets.Features({image_column: datasets.Image(), "label": datasets.ClassLabel(names=labels)})
        splits[split] = datasets.Dataset.from_dict({image_column: [Image.fromarray(x) for x in images], "label": [int(y) for y in ys]}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return Path(path)
