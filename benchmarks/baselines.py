"""Plain PyTorch baselines for the real-tower paradigm benchmark, and the published reference row.

* **linear probe**: the frozen pretrained image tower's pooled features (computed once), a linear
  layer trained with cross-entropy and AdamW;
* **full fine-tune**: the whole image tower trained end to end with a linear layer on its pooled
  features (BatchNorm in train mode, as a plain fine-tune runs it).

Both are ordinary training loops (no medadapt code in the loop), trained per domain on the same
preprocessed images the medadapt runs see (the domain's train split with the run's caps, through
the backbone's image processor), for the same epochs and batch size, once per seed; they are scored
on the same test split with the same metrics (:func:`medadapt.evaluation.accuracy` / ``auroc``).
``paradigms.py --backbone efficientnet-lite0`` runs them in the same process as the paradigm rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: MedMNIST v2 (Yang et al. 2023), Table: ResNet-18 at 28 px, test ACC / AUC
PAPER = {
    "label": "MedMNIST v2 paper: ResNet-18 (28), trained from scratch",
    "citation": "J. Yang, R. Shi, D. Wei, Z. Liu, L. Zhao, B. Ke, H. Pfister, B. Ni. MedMNIST v2 - A large-scale lightweight "
                "benchmark for 2D and 3D biomedical image classification. Scientific Data 10, 41 (2023). "
                "https://doi.org/10.1038/s41597-022-01721-8",
    "note": "published numbers (full training sets, 100 epochs, 28 px); not rerun here",
    "accuracy": {"pneumonia": 0.854, "breast": 0.863},
    "auroc": {"pneumonia": 0.944, "breast": 0.901},
}


@dataclass(frozen=True)
class Baseline:
    """One plain loop: its key, table label, learning rate and whether the tower trains."""

    key: str
    label: str
    lr: float
    tower_trains: bool


BASELINES = [
    Baseline("linear_probe", "plain PyTorch: linear probe on the frozen tower", 3e-3, False),
    Baseline("full_finetune", "plain PyTorch: full fine-tune (tower + linear head)", 1e-3, True),
]


def pixels_of(backbone: Any, dataset: Any, batch: int = 256) -> torch.Tensor:
    """The preprocessed images of a split, as medadapt's trainer feeds them."""
    out = []
    for start in range(0, len(dataset), batch):
        out.append(backbone.preprocess([dataset[i][0] for i in range(start, min(start + batch, len(dataset)))]))
    return torch.cat(out)


def pooled(tower: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` pooled features of the image tower (its ``pooler_output``)."""
    out = tower(pixel_values=pixels).pooler_output
    return out.flatten(1)


def run_baseline(spec: Baseline, make_tower: Any, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 n_labels: int, seed: int, epochs: int, batch_size: int) -> dict[str, Any]:
    """Train one baseline on one domain and score it: ``{"accuracy", "auroc", "n", "train_s"}``."""
    import numpy as np

    from medadapt.evaluation import accuracy, auroc

    started = time.perf_counter()
    torch.manual_seed(seed)
    tower = make_tower()
    x, y = train
    tower.train(spec.tower_trains)
    for p in tower.parameters():
        p.requires_grad_(spec.tower_trains)
    if not spec.tower_trains:
        with torch.no_grad():
            x = torch.cat([pooled(tower, x[i : i + 256]) for i in range(0, len(x), 256)])
    with torch.no_grad():
        width = pooled(tower.eval(), train[0][:2]).shape[1]
    tower.train(spec.tower_trains)
    head = torch.nn.Linear(width, n_labels)
    params = list(head.parameters()) + ([p for p in tower.parameters()] if spec.tower_trains else [])
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            feats = pooled(tower, x[idx]) if spec.tower_trains else x[idx]
            loss = F.cross_entropy(head(feats), y[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    tower.eval()
    with torch.no_grad():
        probs = torch.cat([head(pooled(tower, test[0][i : i + 256])).softmax(-1) for i in range(0, len(test[0]), 256)]).numpy()
    labels = np.asarray(test[1])
    return {"accuracy": accuracy(labels, probs), "auroc": float(auroc(labels, probs)), "n": int(len(labels)),
            "train_s": time.perf_counter() - started}


def run_baselines(config: dict[str, Any], seeds: list[int], test_split: Any, log: Any = print) -> dict[str, Any]:
    """Every baseline on every classification domain of ``config``, for each seed (``test_split``
    loads a domain config's data, as the paradigm rows do)."""
    import real_tower

    backbone = real_tower.real_tower_backbone()

    def make_tower() -> torch.nn.Module:
        return real_tower.real_tower_backbone().model.vision_model

    epochs, batch_size = config["train"]["epochs"], config["train"]["batch_size"]
    data = {}
    for dom in config["domains"]:
        splits = test_split(dom).splits
        if getattr(splits["train"], "open_ended", False):
            continue
        data[dom["name"]] = {
            "labels": len(test_split(dom).labels),
            "train": (pixels_of(backbone, splits["train"]), torch.as_tensor(list(splits["train"].labels), dtype=torch.long)),
            "test": (pixels_of(backbone, splits["test"]), torch.as_tensor(list(splits["test"].labels), dtype=torch.long)),
        }
    out: dict[str, Any] = {}
    for spec in BASELINES:
        per_seed = []
        for seed in seeds:
            final = {d: run_baseline(spec, make_tower, v["train"], v["test"], v["labels"], seed, epochs, batch_size) for d, v in data.items()}
            per_seed.append({"seed": seed, "final": final})
            log(f"  seed {seed} {spec.key:<24} " + "  ".join(f"{d} {m['accuracy']:.3f}/{m['auroc']:.3f}" for d, m in final.items())
                + f"  ({sum(m['train_s'] for m in final.values()):.0f} s)")
        out[spec.key] = {"label": spec.label, "lr": spec.lr, "tower_trains": spec.tower_trains, "epochs": epochs,
                         "batch_size": batch_size, "optimizer": "AdamW (weight decay 0)", "per_seed": per_seed}
    return out
