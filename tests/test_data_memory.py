"""`datasets` in memory (issue 20): the trainer and load_domain take in-memory Dataset/DatasetDict objects per
domain; predict_proba and generate take a datasets Column (datasets 4's lazy ``ds["image"]``) and any iterable
of images; and the generic ``vqa`` format reads image/question/answer tables (CSV, JSONL, save_to_disk, in
memory) with configurable column names and a split column or one table per split."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from medadapt import ContinualVLM
from medadapt.data import DataError, load_domain
from medadapt.data.vqa import OPEN_LABEL
from medadapt.errors import ConfigError, ImageError
from medadapt.tiny import tiny_base

from .training_helpers import one_thread, tiny_config  # noqa: F401


def pictures(n: int, seed: int = 0, size: int = 16) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def image_dataset(n: int, seed: int = 0, with_split: bool = False) -> datasets.Dataset:
    features = datasets.Features({"img": datasets.Image(), "finding": datasets.ClassLabel(names=["normal", "pneumonia"]),
                                  **({"part": datasets.Value("string")} if with_split else {})})
    data = {"img": pictures(n, seed), "finding": [i % 2 for i in range(n)]}
    if with_split:
        data["part"] = ["train" if i < n * 2 // 3 else "test" for i in range(n)]
    return datasets.Dataset.from_dict(data, features=features)


def vqa_rows(n: int, seed: int = 0) -> dict[str, list]:
    answers = ["yes", "no", "left lung", "yes", "no", "right kidney"]
    return {"picture": pictures(n, seed), "q": [f"question {i}?" for i in range(n)], "a": [answers[i % len(answers)] for i in range(n)],
            "subset": ["train" if i % 3 else "test" for i in range(n)]}


HF_IN_MEMORY = {"format": "hf", "columns": {"image": "img", "label": "finding"}}


# -- load_domain with an in-memory source ------------------------------------------------------------
def test_in_memory_datasetdict_and_a_split_column():
    dd = datasets.DatasetDict(train=image_dataset(10), test=image_dataset(6, seed=1))
    domain = load_domain("xr", None, HF_IN_MEMORY, source=dd)
    assert domain.labels == ["normal", "pneumonia"]  # ClassLabel names
    assert len(domain.splits["train"]) == 10 and len(domain.splits["test"]) == 6
    image, label = domain.splits["train"][3]
    assert label == 1 and np.array_equal(np.asarray(image), np.asarray(dd["train"][3]["img"]))
    one = image_dataset(12, with_split=True)
    split = load_domain("xr", ["normal", "pneumonia"], {**HF_IN_MEMORY, "columns": {**HF_IN_MEMORY["columns"], "split": "part"}}, source=one)
    assert (len(split.splits["train"]), len(split.splits["test"])) == (8, 4)
    with pytest.raises(DataError, match="without a 'split' column"):
        load_domain("xr", None, HF_IN_MEMORY, source=image_dataset(4))
    with pytest.raises(DataError, match="cannot read an in-memory dataset"):
        load_domain("xr", ["a", "b"], {"format": "npz", "path": "x.npz"}, source=dd)


# -- the generic vqa format ----------------------------------------------------------------------------
VQA_COLUMNS = {"image": "picture", "question": "q", "answer": "a", "split": "subset"}


def test_vqa_in_memory_open_and_closed():
    table = datasets.Dataset.from_dict(vqa_rows(12))
    cfg = {"format": "vqa", "columns": VQA_COLUMNS}
    open_ = load_domain("reports", None, cfg, source=table)
    train = open_.splits["train"]
    assert open_.labels == [] and len(train) == 8 and len(open_.splits["test"]) == 4
    assert (train.labels == OPEN_LABEL).all() and train.open_ended
    rows = [i for i in range(12) if i % 3]
    assert train.questions == [f"question {i}?" for i in rows]
    assert np.array_equal(np.asarray(train[1][0]), np.asarray(table[rows[1]]["picture"]))
    closed = load_domain("closed", ["no", "yes"], cfg, source=datasets.DatasetDict(train=table, test=table))  # by split name
    assert set(closed.splits["train"].answers) == {"yes", "no"} and len(closed.splits["train"]) == 8  # free text dropped
    assert closed.splits["train"].labels.tolist() == [1 if a == "yes" else 0 for a in closed.splits["train"].answers]


def test_vqa_csv_with_a_split_column_and_relative_image_paths(tmp_path):
    (tmp_path / "img").mkdir()
    rows = vqa_rows(9)
    lines = ["file,question,answer,split"]
    for i, picture in enumerate(rows["picture"]):
        picture.save(tmp_path / "img" / f"{i}.png")
        lines.append(f'img/{i}.png,"{rows["q"][i]}",{rows["a"][i]},{rows["subset"][i]}')
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    domain = load_domain("slake", None, {"format": "vqa", "path": str(tmp_path / "all.csv"), "columns": {"image": "file"}})
    test = domain.splits["test"]
    assert len(test) == 3 and test.answers == [rows["a"][i] for i in (0, 3, 6)]
    assert np.array_equal(np.asarray(test[1][0].convert("RGB")), np.asarray(rows["picture"][3]))
    with pytest.raises(DataError, match=r"column\(s\) \['question_text'\] not in"):
        load_domain("slake", None, {"format": "vqa", "path": str(tmp_path / "all.csv"), "columns": {"image": "file", "question": "question_text"}})


def test_vqa_one_jsonl_per_split_and_a_saved_dataset(tmp_path):
    rows = vqa_rows(6)
    for split, keep in (("train", range(0, 4)), ("test", range(4, 6))):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for i in keep:
                path = tmp_path / f"{split}_{i}.png"
                rows["picture"][i].save(path)
                f.write(json.dumps({"image": path.name, "question": rows["q"][i], "answer": rows["a"][i]}) + "\n")
    domain = load_domain("path", None, {"format": "vqa", "path": str(tmp_path)})  # splits default: train/test files
    assert len(domain.splits["train"]) == 4 and domain.splits["test"].questions == ["question 4?", "question 5?"]
    saved = tmp_path / "saved"
    datasets.DatasetDict(train=datasets.Dataset.from_dict(vqa_rows(4)), test=datasets.Dataset.from_dict(vqa_rows(3, seed=2))).save_to_disk(str(saved))
    from_disk = load_domain("saved", None, {"format": "vqa", "path": str(saved), "columns": VQA_COLUMNS})
    assert len(from_disk.splits["test"]) == 3
    with pytest.raises(DataError, match="no table for split 'val'"):
        load_domain("path", None, {"format": "vqa", "path": str(tmp_path), "splits": {"train": "train", "test": "val"}})


# -- predict_proba / generate on a Column and on any iterable ----------------------------------------
def test_predict_proba_takes_a_datasets_column_and_a_generator(tiny_clip):
    ds = image_dataset(5)
    column = ds["img"]
    as_list = list(ds["img"])
    expected = tiny_clip.predict_proba(as_list, domain="chest")
    assert expected.shape == (5, len(tiny_clip.get_domain("chest").labels))
    assert torch.equal(tiny_clip.predict_proba(column, domain="chest"), expected)
    assert torch.equal(tiny_clip.predict_proba((x for x in as_list), domain="chest"), expected)
    assert torch.equal(tiny_clip.embed_images(column), tiny_clip.embed_images(as_list))
    undecoded = ds.cast_column("img", datasets.Image(decode=False))["img"]  # {"bytes", "path"} cells
    torch.testing.assert_close(tiny_clip.predict_proba(undecoded, domain="chest"), expected)
    with pytest.raises(ImageError, match=r"pass its image column, e.g. ds\['image'\]"):
        tiny_clip.predict_proba(ds, domain="chest")


def test_generate_takes_a_datasets_column():
    torch.manual_seed(0)
    model = ContinualVLM(tiny_base("tiny-llava"))
    model.add_domain("reports", [], "{}", adapter="none", task="vqa")
    ds = datasets.Dataset.from_dict(vqa_rows(3))
    answers = model.generate(ds["picture"], questions=ds["q"], domain="reports", max_new_tokens=3)
    assert answers == model.generate(list(ds["picture"]), questions=list(ds["q"]), domain="reports", max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


# -- the trainer with in-memory datasets ---------------------------------------------------------------
def test_trainer_runs_on_in_memory_datasets(tmp_path, one_thread):  # noqa: F811
    from medadapt.training.trainer import ContinualTrainer

    config = tiny_config(tmp_path / "run", "continual", n_domains=2, n_train=16, n_test=12, rehearsal={"size": 0})
    config.domains[0].data = dict(HF_IN_MEMORY)  # xr: in memory, one DatasetDict
    config.domains[0].labels = None
    memory = {"xr": datasets.DatasetDict(train=image_dataset(16), test=image_dataset(8, seed=3))}
    trainer = ContinualTrainer(config, datasets=memory, progress=False)
    trainer.setup()
    assert len(trainer.data["xr"].splits["train"]) == 16 and trainer.data["xr"].labels == ["normal", "pneumonia"]
    results = trainer.run()
    assert len(results["accuracy_matrix"]) == 2 and "xr" in results["domains"]
    with pytest.raises(ConfigError, match=r"datasets= names \['nope'\]"):
        ContinualTrainer(config, datasets={"nope": memory["xr"]}, progress=False)
