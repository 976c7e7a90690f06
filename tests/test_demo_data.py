"""The real-image subset shipped for the offline demo: small, compressed, balanced as documented, credited."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medadapt.data import load_domain
from medadapt.demo.build import DEMO_LABELS, PER_CLASS
from medadapt.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEMO_NPZ = ROOT / "medadapt" / "demo" / "medical_demo.npz"


def test_demo_subset_is_small_compressed_uint8_and_balanced():
    assert DEMO_NPZ.stat().st_size <= 1_500_000
    with zipfile.ZipFile(DEMO_NPZ) as archive:
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    with np.load(DEMO_NPZ, allow_pickle=False) as npz:
        for domain, counts in PER_CLASS.items():
            for split, n in counts.items():
                images, labels = npz[f"{domain}_{split}_images"], npz[f"{domain}_{split}_labels"]
                assert images.dtype == np.uint8 and images.ndim == 3 and len(images) == len(labels)
                assert np.bincount(labels).tolist() == [n] * len(DEMO_LABELS[domain]), (domain, split)
                assert images.std() > 10  # real pictures, not blanks


def test_demo_config_loads_every_domain_from_the_package():
    config = load_config(ROOT / "recipes" / "configs" / "demo.yaml")
    for domain in config.domains:
        data = load_domain(domain.name, domain.labels, domain.data)
        assert domain.labels == DEMO_LABELS[domain.name]
        assert len(data["train"]) == PER_CLASS[domain.name]["train"] * len(domain.labels)
    for name in ("NOTICE", "README.md"):
        text = (ROOT / name).read_text()
        for credit in ("MedMNIST", "CC BY 4.0", "Yang", "VQA-RAD", "CC0", "Lau", "Scientific Data"):
            assert credit in text, (name, credit)
