"""Quality bar on real data: continual training with rehearsal clearly beats naive continual training.

PneumoniaMNIST -> BreastMNIST -> VQA-RAD organ with the settings of recipes/configs/medmnist.yaml
(train sets capped to keep this well under a minute), three seeds: one shared adapter trained
domain after domain with the recipe's rehearsal memory must keep backward transfer >= -0.03 while
the same training without rehearsal forgets (BWT < -0.03), and its average accuracy must be at
least 0.02 higher (means over the seeds). On this capped data the margins are wide (BWT about
+0.04 vs -0.18, ACC +0.16); the full benchmark (benchmarks/paradigms.py) reports every paradigm,
the recipe's default `rehearsal` paradigm included, on uncapped data. Skips when ../shared/data is absent.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CONFIG = REPO / "recipes" / "configs" / "medmnist.yaml"
SEEDS = (0, 1, 2)
TRAIN_CAPS = {"pneumonia": 500, "breast": 300}  # organ (VQA-RAD) is small already

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} not found (medmnist .npz files and vqa-rad/)"),
]


def _config(paradigm: str, size: int | None, seed: int, out: Path) -> dict:
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for dom in data["domains"]:
        path = Path(dom["data"]["path"])
        dom["data"]["path"] = str(DATA.joinpath(*path.parts[3:]))  # "../shared/data/<x>" -> DATA/<x>
        if dom["name"] in TRAIN_CAPS:
            dom["data"]["max_samples"] = {"train": TRAIN_CAPS[dom["name"]]}
    data.update(paradigm=paradigm, seed=seed, output_dir=str(out), compare_naive=False)
    if size is not None:
        data["rehearsal"]["size"] = size
    return data


@pytest.fixture
def one_thread():
    """One torch thread: on shared CPU cores, spinning OpenMP threads slow these runs down many times."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.timeout(300)
def test_rehearsal_beats_naive_continual_on_real_data(tmp_path: Path, one_thread) -> None:
    from accelerate import Accelerator

    from medadapt.training.config import load_config
    from medadapt.training.trainer import ContinualTrainer

    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    missing = [d["data"]["path"] for d in data["domains"] if not DATA.joinpath(*Path(d["data"]["path"]).parts[3:]).exists()]
    if missing:
        pytest.skip(f"real data missing under {DATA}: {missing}")
    accelerator = Accelerator(cpu=True)
    runs: dict[str, list[dict]] = {"rehearsal": [], "naive": []}
    for seed in SEEDS:
        for name, paradigm, size in (("rehearsal", "continual", None), ("naive", "continual", 0)):
            cfg = load_config(None, defaults=_config(paradigm, size, seed, tmp_path / f"{name}{seed}"))
            runs[name].append(ContinualTrainer(cfg, overwrite=True, accelerator=accelerator, progress=False).run())

    def mean(name: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs[name])

    detail = {n: [(round(r["acc"], 3), round(r["bwt"], 3)) for r in rs] for n, rs in runs.items()}
    assert mean("rehearsal", "bwt") >= -0.03, f"rehearsal forgets: (ACC, BWT) per seed {detail}"
    assert mean("naive", "bwt") < -0.03, f"naive continual training shows no real forgetting: {detail}"
    assert mean("rehearsal", "acc") - mean("naive", "acc") >= 0.02, f"rehearsal is not clearly better than naive: {detail}"
