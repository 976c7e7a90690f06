"""Rebuild ``medical_demo.npz``, the small real-image subset behind the offline demo.

    python -m medadapt.demo.build --source ../shared/data --out medadapt/demo/medical_demo.npz

Sources (see NOTICE): PneumoniaMNIST and BreastMNIST from MedMNIST v2 (CC BY 4.0, Yang et al. 2023),
VQA-RAD (CC0 1.0, Lau et al. 2018). Every split is drawn class-balanced with a fixed seed, so its
majority-class rate is 1 / number of classes (up to a rounding sample). VQA-RAD images are made
greyscale, resized so the short side is 32 pixels and centre-cropped to 32 x 32, as the tiny CLIP's
image processor would; the MedMNIST images stay 28 x 28. Everything is stored ``uint8`` in one
compressed npz with keys ``{domain}_{split}_images`` / ``{domain}_{split}_labels``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

#: Label names per domain, in label-index order.
DEMO_LABELS = {
    "pneumonia": ["normal", "pneumonia"],
    "breast": ["malignant", "normal or benign"],
    "organ": ["head", "chest", "abdomen"],
}
#: Per-class sample counts drawn for each split.
PER_CLASS = {
    "pneumonia": {"train": 300, "test": 150},
    "breast": {"train": 147, "test": 42},
    "organ": {"train": 70, "test": 31},
}
ORGANS = ("HEAD", "CHEST", "ABD")


def balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` samples of every class (sorted)."""
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def medmnist(path: Path, name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    with np.load(path) as npz:
        for split, n in PER_CLASS[name].items():
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
            idx = balanced(labels, n, rng)
            out[f"{name}_{split}_images"] = images[idx].astype(np.uint8)
            out[f"{name}_{split}_labels"] = labels[idx].astype(np.uint8)
    return out


def square_grey(path: Path, size: int = 32) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("L")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BICUBIC)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def vqa_rad_organ(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    records = json.loads((root / "vqa_rad.json").read_text(encoding="utf-8"))
    organ = {str(r["image_name"]).strip(): ORGANS.index(str(r["image_organ"]).strip().upper()) for r in records}
    names = sorted(organ)
    labels = np.array([organ[n] for n in names])
    out, used = {}, np.zeros(len(names), bool)
    for split, n in PER_CLASS["organ"].items():
        free = np.flatnonzero(~used)
        idx = free[balanced(labels[free], n, rng)]
        used[idx] = True
        out[f"organ_{split}_images"] = np.stack([square_grey(root / "images" / names[k]) for k in idx])
        out[f"organ_{split}_labels"] = labels[idx].astype(np.uint8)
    return out


def build(source: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """All arrays of the demo subset, drawn from the data folder ``source``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    arrays.update(medmnist(source / "pneumoniamnist.npz", "pneumonia", rng))
    arrays.update(medmnist(source / "breastmnist.npz", "breast", rng))
    arrays.update(vqa_rad_organ(source / "vqa-rad", rng))
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("medical_demo.npz"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = build(args.source, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    for key in sorted(k for k in arrays if k.endswith("_labels")):
        print(key, np.bincount(arrays[key]).tolist())
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
