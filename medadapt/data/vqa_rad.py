"""VQA-RAD question-answer pairs with the published train/test split.

VQA-RAD (Lau et al., Scientific Data 2018, CC0) holds clinician-written questions about 315
radiology images. The split used by most papers is MEVF's (``mevf_split/trainset.json``: 3064
pairs including paraphrased questions, ``testset.json``: 451 pairs). A folder laid out as::

    vqa-rad/images/synpic54610.jpg ...
    vqa-rad/mevf_split/trainset.json
    vqa-rad/mevf_split/testset.json

is read by :func:`load_vqa_rad` into :class:`VQASample` records. Answers are normalised with
:func:`medadapt.vqa_metrics.normalize_answer` (lower case, whitespace stripped and collapsed,
trailing punctuation dropped), answer types are ``"CLOSED"`` or ``"OPEN"`` (the trailing spaces
of a few raw values are stripped), question types are upper-cased (``"Other"`` -> ``"OTHER"``,
the typos ``"ATRIB"``/``"PRSE"`` -> ``"ATTRIB"``/``"PRES"``), and a record may carry several
(``"PRES, POS"``).

The data is public: the images and the MEVF split ship with the MEVF / PubMedCLIP repositories,
and the same question-answer pairs are on the Hugging Face Hub as ``flaviagiammarino/vqa-rad``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from ..vqa_metrics import normalize_answer
from .base import DataError, DataNotFoundError

__all__ = [
    "ANSWER_TYPES",
    "DEFAULT_VQA_RAD_ROOT",
    "VQA_RAD_HUB_ID",
    "VQA_RAD_SPLITS",
    "VQASample",
    "load_vqa_rad",
]

#: Where the recipes and tests look for the data, relative to the repository root.
DEFAULT_VQA_RAD_ROOT = Path("..") / "shared" / "data" / "vqa-rad"
#: The public copy of VQA-RAD on the Hugging Face Hub.
VQA_RAD_HUB_ID = "flaviagiammarino/vqa-rad"
#: Split name -> annotation file, relative to the VQA-RAD folder.
VQA_RAD_SPLITS = {"train": "mevf_split/trainset.json", "test": "mevf_split/testset.json"}
#: The two answer types.
ANSWER_TYPES = ("CLOSED", "OPEN")
_QUESTION_TYPE_TYPOS = {"ATRIB": "ATTRIB", "PRSE": "PRES"}

_WHERE_TO_GET = (
    "VQA-RAD is public (CC0): download it (e.g. the Hugging Face Hub dataset "
    f"'{VQA_RAD_HUB_ID}', or the MEVF release that holds images/ and mevf_split/) and pass its folder as root"
)


@dataclass(frozen=True)
class VQASample:
    """One VQA-RAD question about one image.

    ``answer`` is normalised; ``question_type`` is the canonical upper-case type string (several
    types joined by ``", "``), whose parts are in :attr:`question_types`.
    """

    qid: int | str
    image_path: Path
    question: str
    answer: str
    answer_type: str
    question_type: str
    organ: str
    phrase_type: str = ""

    @property
    def question_types(self) -> tuple[str, ...]:
        """The question's types, e.g. ``("PRES", "POS")``."""
        return tuple(self.question_type.split(", "))

    @property
    def is_closed(self) -> bool:
        """Whether the question is closed-ended (yes/no or a choice named in the question)."""
        return self.answer_type == "CLOSED"

    def load_image(self) -> Image.Image:
        """The image as an RGB PIL image, fully read (no file handle left open)."""
        try:
            with Image.open(self.image_path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DataNotFoundError(f"VQA-RAD image not found: {self.image_path}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"VQA-RAD image {self.image_path} cannot be decoded: {e}") from None


def _canonical_question_type(raw: object) -> str:
    parts = [p.strip().upper() for p in str(raw or "").split(",")]
    parts = [_QUESTION_TYPE_TYPOS.get(p, p) for p in parts if p]
    return ", ".join(parts)


def _as_set(value: str | Iterable[str] | None, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise DataError(f"{what} filter must be a non-empty string or list of strings, got {value!r}")
    return frozenset(_QUESTION_TYPE_TYPOS.get(v.strip().upper(), v.strip().upper()) for v in items)


def _sample(record: object, index: int, source: Path, image_dir: Path) -> VQASample:
    where = f"{source} record {index}"
    if not isinstance(record, dict):
        raise DataError(f"{where} must be a JSON object, got {type(record).__name__}")
    where = f"{source} record {index} (qid {record.get('qid')!r})"
    image_name = str(record.get("image_name") or "").strip()
    if not image_name:
        raise DataError(f"{where} has no image_name; every VQA-RAD question needs its image")
    image_path = image_dir / image_name
    if not image_path.is_file():
        raise DataNotFoundError(f"{where}: image {image_name!r} is missing from {image_dir}. {_WHERE_TO_GET}")
    raw_answer = record.get("answer")
    answer = normalize_answer(raw_answer) if isinstance(raw_answer, (str, int, float)) else ""
    if not answer or isinstance(raw_answer, bool):
        raise DataError(f"{where} has no answer (got {raw_answer!r}); every VQA-RAD question needs one")
    question = " ".join(str(record.get("question") or "").split())
    if not question:
        raise DataError(f"{where} has no question")
    answer_type = str(record.get("answer_type") or "").strip().upper()
    if answer_type not in ANSWER_TYPES:
        raise DataError(f"{where} has answer_type {record.get('answer_type')!r}; expected one of {list(ANSWER_TYPES)}")
    return VQASample(
        qid=record.get("qid", index),
        image_path=image_path,
        question=question,
        answer=answer,
        answer_type=answer_type,
        question_type=_canonical_question_type(record.get("question_type")),
        organ=str(record.get("image_organ") or "").strip().upper(),
        phrase_type=str(record.get("phrase_type") or "").strip(),
    )


def load_vqa_rad(
    root: str | Path = DEFAULT_VQA_RAD_ROOT,
    split: str = "train",
    *,
    answer_type: str | None = None,
    question_type: str | Iterable[str] | None = None,
    organ: str | Iterable[str] | None = None,
) -> list[VQASample]:
    """Read one split (``"train"`` or ``"test"``, MEVF's) of the VQA-RAD folder ``root``.

    Filters (case-insensitive): ``answer_type`` (``"closed"`` or ``"open"``), ``question_type``
    (one type or several; a record matches when any of its types is among them, e.g. ``"PRES"``
    keeps ``"PRES, POS"``), ``organ`` (``"HEAD"``, ``"CHEST"``, ``"ABD"``). Records keep the file's
    order. Raises :class:`DataNotFoundError` for a missing folder, split file or image and
    :class:`DataError` for a record without image name, answer, question or a valid answer type.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"VQA-RAD folder not found: {root}. {_WHERE_TO_GET}")
    if split not in VQA_RAD_SPLITS:
        raise DataError(f"VQA-RAD has splits {sorted(VQA_RAD_SPLITS)}, not {split!r}")
    source = root / VQA_RAD_SPLITS[split]
    if not source.is_file():
        raise DataNotFoundError(f"VQA-RAD {split} split file not found: {source}. {_WHERE_TO_GET}")
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataNotFoundError(f"VQA-RAD image folder not found: {image_dir}. {_WHERE_TO_GET}")
    wanted_answer = None
    if answer_type is not None:
        wanted_answer = str(answer_type).strip().upper()
        if wanted_answer not in ANSWER_TYPES:
            raise DataError(f"answer_type filter must be one of {list(ANSWER_TYPES)} (any case), got {answer_type!r}")
    wanted_types = _as_set(question_type, "question_type")
    wanted_organs = _as_set(organ, "organ")
    try:
        records = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"VQA-RAD split file {source} is not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise DataError(f"VQA-RAD split file {source} must hold a JSON list of records, got {type(records).__name__}")
    samples = [_sample(r, i, source, image_dir) for i, r in enumerate(records)]
    return [
        s
        for s in samples
        if (wanted_answer is None or s.answer_type == wanted_answer)
        and (wanted_types is None or not wanted_types.isdisjoint(s.question_types))
        and (wanted_organs is None or s.organ in wanted_organs)
    ]
