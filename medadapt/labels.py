"""Checks on a domain's labels against the text tower: labels whose prompts collide once tokenised.

The text tower reads at most ``backbone.text_max_length()`` tokens. Two label prompts that differ only
after that cut become the same input, get the same embedding, and the classifier can only answer
0.5/0.5 between them, silently. :func:`check_label_prompts` refuses such labels with a
:class:`~medadapt.errors.DomainError` that names them and the limit.
"""

from __future__ import annotations

from typing import Any

from .errors import DomainError


def check_label_prompts(backbone: Any, name: str, prompts: list[str], labels: list[str]) -> None:
    """Refuse labels whose prompts tokenise to the same (truncated) token sequence (dual encoders: the
    labels are scored through the text tower; other families do not read label prompts this way)."""
    from .families.dual_encoder import DualEncoderFamily, tokenize_texts

    if not isinstance(backbone.family, DualEncoderFamily):
        return

    limit = backbone.text_max_length()
    ids = tokenize_texts(backbone, list(prompts))["input_ids"].tolist()
    seen: dict[tuple[int, ...], str] = {}
    for label, row in zip(labels, ids):
        key = tuple(row)
        if key in seen:
            raise DomainError(
                f"domain {name!r}: labels {seen[key]!r} and {label!r} are the same text for the model once their "
                f"prompts are cut to the text tower's {limit} tokens, so it could never tell them apart. Shorten "
                "the labels (or the prompt template) so that they differ within the first tokens."
            )
        seen[key] = label
