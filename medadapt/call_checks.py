"""Checks on what a user passes to ``predict_proba`` and ``generate``, before any forward pass.

Each check raises a :class:`~medadapt.errors.MedAdaptError` that names the argument and the fix,
instead of the raw ``TypeError``/``ValueError`` torch or transformers would raise later:

* ``domain``: one domain name or one per image (not ``None``, not a number);
* ``questions``: ``None``, one string for every image, or one per image where ``None`` means
  "no question: ask the row's domain's own" (never the text ``"None"``), the same in both calls;
* a free-text domain (``task="vqa"``) has no labels to score: ``predict_proba`` refuses it;
* a question or label may not contain the model's image placeholder tokens (``<image>``,
  ``<start_of_image>``, ...): the processor would count one image too many;
* a question whose prompt (image tokens included) leaves no room for an answer within the
  model's context is refused by both calls, with the same message;
* ``max_new_tokens`` is a positive integer, capped so that prompt plus answer fit the context.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import DomainError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from .domains import Domain
    from .families.base import Scorer

__all__ = [
    "domain_names",
    "questions_per_image",
    "image_markers",
    "check_no_markers",
    "prompt_length",
    "scoring_questions",
    "generation_questions",
    "new_token_budget",
]

#: Processor / tokenizer attributes that hold an image placeholder token.
_MARKER_ATTRS = (
    "image_token", "boi_token", "eoi_token", "fake_image_token", "global_image_token",
    "video_token", "vision_start_token", "vision_end_token",
)
_MARKER = re.compile(r"<\|?[A-Za-z_]+\|?>")


def domain_names(domain: Any, n: int) -> list[str]:
    """One domain name per image: ``domain`` is a name or a sequence of ``n`` names."""
    if isinstance(domain, str):
        return [domain] * n
    if isinstance(domain, (list, tuple)) and all(isinstance(d, str) for d in domain):
        if len(domain) != n:
            raise DomainError(f"got {n} images but {len(domain)} domain names; give one per image.")
        return list(domain)
    shown = f"{domain!r} ({type(domain).__name__})"
    raise DomainError(
        f"domain must be a domain name, a list of one name per image, or 'auto' for routing; got {shown}."
    )


def questions_per_image(questions: Any, n: int) -> list[str | None] | None:
    """``None``, or one question (or ``None``: the domain's own) per image; one string serves every image.
    A sized, ordered column (a datasets ``Column``, a pandas Series) counts as a list."""
    if questions is None:
        return None
    if isinstance(questions, str):
        return [questions] * n
    if not isinstance(questions, (list, tuple, bytes, dict, set)) and hasattr(questions, "__iter__") and hasattr(questions, "__len__"):
        questions = list(questions)  # an ordered column, e.g. a datasets Column (ds["question"]) or a pandas Series
    if not isinstance(questions, (list, tuple)):
        raise InputError(
            f"questions must be a string, a list of one question per image (None for the domain's own), "
            f"or None; got {questions!r} ({type(questions).__name__})."
        )
    if len(questions) != n:
        raise DomainError(f"got {n} images but {len(questions)} questions; give one per image.")
    for i, q in enumerate(questions):
        if q is not None and not isinstance(q, str):
            raise InputError(f"question {i} is {q!r} ({type(q).__name__}); a question is a string, or None for the domain's own.")
    return list(questions)


def image_markers(scorer: "Scorer") -> tuple[str, ...]:
    """The image placeholder tokens of a generative scorer's processor (none for other families)."""
    found: set[str] = set()
    for owner in (getattr(scorer, "processor", None), getattr(scorer, "tokenizer", None)):
        for attr in _MARKER_ATTRS:
            value = getattr(owner, attr, None) if owner is not None else None
            if isinstance(value, str) and value:
                found.add(value)
    spec = getattr(scorer, "spec", None)
    found.update(_MARKER.findall(getattr(spec, "plain_prompt", "") or ""))
    return tuple(sorted(found))


def check_no_markers(markers: Sequence[str], text: str, what: str) -> None:
    """Refuse ``text`` (a question or label) that contains one of the image placeholder ``markers``."""
    hits = [m for m in markers if m in text]
    if hits:
        raise InputError(
            f"{what} {text[:80]!r} contains {', '.join(hits)}, the model's image placeholder token: the processor would "
            "read it as a second image. Remove it; medadapt places the image itself."
        )


def prompt_length(scorer: Any, question: str) -> int:
    """Tokens of the prompt for ``question`` with one image (image tokens and chat template included)."""
    return len(scorer.encode(question, []).context)


def _check_room(scorer: Any, questions: Sequence[str]) -> int:
    """The longest prompt among ``questions``; refuse one that leaves no room for a token of answer."""
    limit = scorer.backbone.text_max_length()
    longest = 0
    for q in dict.fromkeys(questions):
        length = prompt_length(scorer, q)
        if length >= limit:
            raise InputError(
                f"question {q[:60]!r}... ({len(q)} characters) is {length} tokens with its prompt and image, and the "
                f"model reads at most {limit}, with room for at least one answer token; shorten the question."
            )
        longest = max(longest, length)
    return longest


def _is_generative(scorer: Any) -> bool:
    return getattr(getattr(scorer.backbone, "family", None), "kind", None) == "generative"


def _fill(rows: list[str | None], domains: Sequence["Domain"] | None, question_of: Callable[["Domain"], str]) -> list[str]:
    out = []
    for i, q in enumerate(rows):
        if q is None:
            if domains is None:
                raise InputError(f"question {i} is None and no domain is given to ask its own question; give one or the other.")
            q = question_of(domains[i])
        out.append(q)
    return out


def scoring_questions(scorer: "Scorer", domains: Sequence["Domain"], questions: Any) -> list[str] | None:
    """Check ``predict_proba``'s ``questions`` for images of ``domains`` (one per image, from
    :func:`domain_names`); the questions to ask, or None.

    ``None`` entries become the row's domain's own question. Refuses free-text (``task="vqa"``)
    domains, image placeholder tokens in questions and labels, and questions too long for the model.
    """
    n = len(domains)
    distinct = list({d.name: d for d in domains}.values())
    for d in distinct:
        if d.task == "vqa":
            raise DomainError(
                f"domain {d.name!r} is a free-text domain (task='vqa'): it has no labels to score. Answer it with "
                f"model.generate(images, domain={d.name!r}), and call predict_proba on classification domains only."
            )
    rows = questions_per_image(questions, n)
    if not _is_generative(scorer):
        return rows
    asked = _fill(rows, domains, scorer.question_of) if rows is not None else [scorer.question_of(d) for d in domains]
    markers = image_markers(scorer)
    for q in dict.fromkeys(asked):
        check_no_markers(markers, q, "question")
    for d in distinct:
        for label in d.labels:
            check_no_markers(markers, label, f"domain {d.name!r}: label")
    _check_room(scorer, asked)
    return asked if rows is not None else None


def generation_questions(scorer: "Scorer", n: int, domains: Sequence["Domain"] | None, questions: Any) -> list[str] | None:
    """Check ``generate``'s ``questions`` for ``n`` images (``None`` entries: the row's domain's question).

    Returns the questions to ask, or ``None`` when none were given (each domain's own is asked).
    """
    rows = questions_per_image(questions, n)
    if not _is_generative(scorer):  # the family refuses to generate, with its own message
        return rows
    asked = _fill(rows, domains, scorer.question_of) if rows is not None else (
        [scorer.question_of(d) for d in domains] if domains is not None else None
    )
    if asked is None:
        return None
    markers = image_markers(scorer)
    for q in dict.fromkeys(asked):
        check_no_markers(markers, q, "question")
    _check_room(scorer, asked)
    return asked if rows is not None else None


def new_token_budget(scorer: Any, questions: Sequence[str], max_new_tokens: Any) -> int:
    """``max_new_tokens`` checked (a positive integer) and capped so every prompt plus answer fits the context."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer (the longest answer in tokens), got {max_new_tokens!r}.")
    if not _is_generative(scorer):
        return int(max_new_tokens)
    room = scorer.backbone.text_max_length() - _check_room(scorer, questions)
    return int(min(int(max_new_tokens), room))
