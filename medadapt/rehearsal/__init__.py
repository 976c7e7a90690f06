"""Rehearsal (replay) memory for continual training of the shared adapter."""

from .buffer import RehearsalBuffer, replay_count
from .policies import (
    Ref,
    RehearsalError,
    SelectionPolicy,
    available_policies,
    get_policy,
    register_policy,
)

__all__ = [
    "Ref",
    "RehearsalBuffer",
    "RehearsalError",
    "SelectionPolicy",
    "available_policies",
    "get_policy",
    "register_policy",
    "replay_count",
]
