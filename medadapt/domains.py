"""Domains: a modality, a site or a task with its labels, prompt template and adapter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import DomainError

# "base"/"auto" mean something as an adapter argument; the others are folders a training run writes
_RESERVED = {"base", "auto", "__base__", "checkpoints", "naive_baseline"}
MAX_NAME_LENGTH = 100  # names become folder names (and parts of temporary names) on every filesystem
TASKS = ("classification", "vqa")  # vqa: free-text answers (generative bases only)


def validate_name(name: str, what: str = "domain") -> str:
    """Names become folder names and adapter keys: letters, digits, '-' and '_' only."""
    if not isinstance(name, str) or not name:
        raise DomainError(f"{what} name must be a non-empty string, got {name!r}.")
    if len(name) > MAX_NAME_LENGTH:
        raise DomainError(f"{what} name {name[:20]!r}... is {len(name)} characters long; the limit is {MAX_NAME_LENGTH} (it becomes a folder name).")
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


def validate_labels(domain: str, labels: list[Any]) -> list[str]:
    """Labels as strings; refuses None, empty labels and labels equal up to case or surrounding spaces."""
    out: list[str] = []
    for i, label in enumerate(labels):
        if label is None or isinstance(label, (bool, list, dict, tuple, set)):
            raise DomainError(f"domain {domain!r}: label {i} is {label!r}; every label must be a non-empty string.")
        text = str(label)
        if not text.strip():
            raise DomainError(f"domain {domain!r}: label {i} is empty ({text!r}); every label must be a non-empty string.")
        out.append(text)
    groups: dict[str, list[str]] = {}
    for text in out:
        groups.setdefault(" ".join(text.split()).casefold(), []).append(text)
    dupes = [group for group in groups.values() if len(group) > 1]
    if dupes:
        shown = sorted({text for group in dupes for text in group})
        raise DomainError(
            f"domain {domain!r}: duplicate labels {shown} (labels that differ only in case or spaces are the same "
            "class to a text encoder); give each class one label."
        )
    return out


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
        self.labels = validate_labels(self.name, self.labels)
        validate_prompt(self.prompt)

    @property
    def question(self) -> str:
        """The question a generative base is asked for this domain: the prompt template's text before ``{}``."""
        return self.prompt.split("{}", 1)[0].strip()

    def prompts(self) -> list[str]:
        """The label prompts, one per label, in label order."""
        return [self.prompt.format(label) for label in self.labels]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
