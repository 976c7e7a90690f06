"""VQA-RAD loader: the published MEVF split on the real data (skips without ../shared/data), and
clear errors for broken folders and records (on small folders written here)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medadapt.data import DataError, DataNotFoundError
from medadapt.data.vqa_rad import VQA_RAD_HUB_ID, VQASample, load_vqa_rad
from medadapt.vqa_metrics import normalize_answer

VQA_RAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vqa-rad"
needs_vqa_rad = pytest.mark.skipif(
    not (VQA_RAD / "mevf_split").is_dir(), reason=f"VQA-RAD folder {VQA_RAD} is absent (only on the dev machine)"
)


def _record(qid: int, **overrides) -> dict:
    rec = {
        "qid": qid,
        "image_name": "img0.jpg",
        "image_organ": "CHEST",
        "answer": "Yes",
        "answer_type": "CLOSED",
        "question_type": "PRES",
        "question": "Is there an effusion?",
        "phrase_type": "freeform",
    }
    rec.update(overrides)
    return rec


def _folder(tmp_path: Path, train: list, test: list | None = None) -> Path:
    root = tmp_path / "vqa-rad"
    (root / "images").mkdir(parents=True)
    (root / "mevf_split").mkdir()
    Image.fromarray(np.full((20, 24), 128, dtype=np.uint8)).save(root / "images" / "img0.jpg")
    (root / "mevf_split" / "trainset.json").write_text(json.dumps(train))
    (root / "mevf_split" / "testset.json").write_text(json.dumps(test or []))
    return root


# ------------------------------------------------------------------ on a folder written here
def test_records_are_normalised_and_filtered(tmp_path):
    root = _folder(
        tmp_path,
        [
            _record(1, answer="  Yes "),
            _record(2, answer="Right  Lower Lobe", answer_type="OPEN", question_type="POS, PRES", image_organ="abd"),
            _record(3, answer=4, answer_type="OPEN ", question_type="COUNT"),
            _record(4, answer="No", answer_type="CLOSED ", question_type="ATRIB"),
        ],
    )
    samples = load_vqa_rad(root, "train")
    assert [s.qid for s in samples] == [1, 2, 3, 4]
    assert [s.answer for s in samples] == ["yes", "right lower lobe", "4", "no"]
    assert [s.answer_type for s in samples] == ["CLOSED", "OPEN", "OPEN", "CLOSED"]
    assert samples[1].question_types == ("POS", "PRES") and samples[1].organ == "ABD"
    assert samples[3].question_type == "ATTRIB"  # typo in the raw data
    assert samples[0].image_path == root / "images" / "img0.jpg"
    image = samples[0].load_image()
    assert image.mode == "RGB" and image.size == (24, 20)

    assert [s.qid for s in load_vqa_rad(root, "train", answer_type="closed")] == [1, 4]
    assert [s.qid for s in load_vqa_rad(root, "train", answer_type="OPEN")] == [2, 3]
    assert [s.qid for s in load_vqa_rad(root, "train", question_type="pres")] == [1, 2]
    assert [s.qid for s in load_vqa_rad(root, "train", question_type=["COUNT", "ATTRIB"])] == [3, 4]
    assert [s.qid for s in load_vqa_rad(root, "train", organ="ABD")] == [2]
    assert load_vqa_rad(root, "test") == []


def test_missing_folder_says_where_to_get_the_data(tmp_path):
    with pytest.raises(DataNotFoundError, match=f"VQA-RAD folder not found.*{VQA_RAD_HUB_ID}"):
        load_vqa_rad(tmp_path / "nowhere")
    root = _folder(tmp_path, [_record(1)])
    (root / "mevf_split" / "testset.json").unlink()
    with pytest.raises(DataNotFoundError, match=f"test split file not found.*{VQA_RAD_HUB_ID}"):
        load_vqa_rad(root, "test")


@pytest.mark.parametrize(
    "record, error, match",
    [
        (_record(7, answer=""), DataError, r"qid 7.*has no answer"),
        (_record(7, answer=None), DataError, r"qid 7.*has no answer"),
        (_record(7, image_name=""), DataError, r"qid 7.*has no image_name"),
        (_record(7, image_name="gone.jpg"), DataNotFoundError, r"qid 7.*'gone.jpg' is missing"),
        (_record(7, answer_type="MAYBE"), DataError, r"qid 7.*answer_type 'MAYBE'"),
        (_record(7, question=" "), DataError, r"qid 7.*has no question"),
        ("not a record", DataError, r"record 1 must be a JSON object"),
    ],
)
def test_bad_record_is_named(tmp_path, record, error, match):
    root = _folder(tmp_path, [_record(1), record])
    with pytest.raises(error, match=match):
        load_vqa_rad(root, "train")


def test_bad_arguments_and_files(tmp_path):
    root = _folder(tmp_path, [_record(1)])
    with pytest.raises(DataError, match="splits.*'test', 'train'.*not 'val'"):
        load_vqa_rad(root, "val")
    with pytest.raises(DataError, match="answer_type filter"):
        load_vqa_rad(root, answer_type="yes/no")
    with pytest.raises(DataError, match="question_type filter"):
        load_vqa_rad(root, question_type=[])
    (root / "mevf_split" / "trainset.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_vqa_rad(root, "train")
    (root / "mevf_split" / "trainset.json").write_text('{"qid": 1}')
    with pytest.raises(DataError, match="JSON list"):
        load_vqa_rad(root, "train")
    (root / "images" / "img0.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot be decoded"):
        VQASample(1, root / "images" / "img0.jpg", "q", "a", "OPEN", "PRES", "HEAD").load_image()


# ------------------------------------------------------------------ on the real data
@needs_vqa_rad
def test_real_mevf_split_sizes_and_answer_types():
    train, test = load_vqa_rad(VQA_RAD, "train"), load_vqa_rad(VQA_RAD, "test")
    assert (len(train), len(test)) == (3064, 451)  # MEVF's published split
    assert Counter(s.answer_type for s in train) == {"CLOSED": 1823, "OPEN": 1241}
    assert Counter(s.answer_type for s in test) == {"CLOSED": 272, "OPEN": 179}
    assert len(load_vqa_rad(VQA_RAD, "test", answer_type="closed")) == 272
    raw = json.loads((VQA_RAD / "mevf_split" / "testset.json").read_text())
    assert [s.qid for s in test] == [r["qid"] for r in raw]
    assert [s.answer for s in test] == [normalize_answer(r["answer"]) for r in raw]
    assert any(r["answer"] != normalize_answer(r["answer"]) for r in raw)  # e.g. "Yes" -> "yes"
    for s in train + test:
        assert s.answer == normalize_answer(s.answer) and s.answer
        assert s.organ in ("HEAD", "CHEST", "ABD")
    # most closed answers are yes/no; open answers are varied
    closed_test = Counter(s.answer for s in test if s.is_closed)
    assert closed_test["yes"] + closed_test["no"] == 251
    assert {"yes", "no"} - {s.answer for s in test if not s.is_closed} == {"yes", "no"}


@needs_vqa_rad
def test_real_images_load_and_question_type_filter():
    test = load_vqa_rad(VQA_RAD, "test", question_type="PRES")
    assert len(test) == 163 + 2 + 2 + 1 + 1 + 1 + 1  # PRES alone or combined with another type
    assert all("PRES" in s.question_types for s in test)
    image = test[0].load_image()
    assert image.mode == "RGB" and min(image.size) >= 256
    assert len({s.image_path for s in load_vqa_rad(VQA_RAD, "test")}) > 50
