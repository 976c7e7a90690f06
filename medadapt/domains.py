"""Domains: a modality, a site or a task with its labels, prompt template and adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import DomainError

_RESERVED = {"base", "auto", "__base__"}
TASKS = ("classification", "vqa")  # vqa: free-text answers (generative bases only)


def validate_name(name: str, what: str = "domain") -> str:
    """Names become folder names and adapter keys: letters, digits, '-' and '_' only."""
    if not isinstance(name, str) or not name:
        raise DomainError(f"{what} name must be a non-empty string, got {name!r}.")
    if name in _RESERVED:
        raise DomainError(f"{what} name {name!r} is reserved ({', '.join(sorted(_RESERVED))}).")
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "-_"))})
    if bad:
        raise DomainError(f"{what} name {name!r} may only use letters, digits, '-' and '_'; found {bad}.")
    return name


def validate_prompt(prompt: str) -> str:
    """A prompt template must contain exactly one ``{}`` where the label goes."""
    if not isinstance(prompt, str) or prompt.count("{}") != 1:
        raise DomainError(
            f"prompt template {prompt!r} must contain exactly one '{{}}' where the label goes, "
            "e.g. 'a chest x-ray showing {}.'."
        )
    try:
        prompt.format("label")
    except (IndexError, KeyError, ValueError) as exc:
        raise DomainError(f"prompt template {prompt!r} is not a valid format string: {exc}") from exc
    return prompt


@dataclass
class Domain:
    """A named domain: its class labels, prompt template and the name and type of its adapter."""

    name: str
    labels: list[str]
    prompt: str = "{}"
    adapter_type: str = "lora"
    metadata: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.task not in TASKS:
            raise DomainError(f"domain {self.name!r}: task must be one of {list(TASKS)}, got {self.task!r}.")
        if self.task == "vqa" and isinstance(self.labels, (list, tuple)) and not self.labels:
            self.labels = []  # free-text answers: no label set
        elif isinstance(self.labels, str) or not self.labels:
            raise DomainError(f"domain {self.name!r}: labels must be a non-empty list of strings, got {self.labels!r}.")
        self.labels = [str(label) for label in self.labels]
        if len(set(self.labels)) != len(self.labels):
            dupes = sorted({label for label in self.labels if self.labels.count(label) > 1})
            raise DomainError(f"domain {self.name!r}: duplicate labels {dupes}.")
        validate_prompt(self.prompt)

    def prompts(self) -> list[str]:
        """The label prompts, one per label, in label order."""
        return [self.prompt.format(label) for label in self.labels]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
