"""The training paradigms compared by the research, as plans of stages and phases.

A *phase* trains one adapter on some domains' data (optionally mixed with rehearsal replay); a
*stage* groups the phases that happen when one new domain (or, for ``joint``, all data) arrives,
and says which adapter evaluates each domain afterwards. The loop executes plans and never asks
which paradigm it runs, so a new paradigm is a new planner registered here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .config import ConfigError

SHARED = "shared"


@dataclass
class Phase:
    """Train ``adapter`` on the train splits of ``domains``, with replay mixed in when ``replay``."""

    adapter: str
    domains: list[str]
    replay: bool = False


@dataclass
class Stage:
    """One continual step: its phases, which domains join the rehearsal memory after it, and the
    adapter that evaluates each domain in each *view* (``None`` = frozen base)."""

    name: str
    phases: list[Phase]
    memorise: list[str] = field(default_factory=list)
    views: dict[str, dict[str, str | None]] = field(default_factory=dict)


@dataclass
class Plan:
    """Adapters to create (``(name, kind)``, kind ``domain`` or ``shared``), stages, and the view
    whose accuracy matrix is the run's headline result."""

    adapters: list[tuple[str, str]]
    stages: list[Stage]
    primary_view: str


Planner = Callable[[list[str], bool], Plan]
_PLANNERS: dict[str, Planner] = {}


def register_paradigm(name: str) -> Callable[[Planner], Planner]:
    def deco(fn: Planner) -> Planner:
        _PLANNERS[name] = fn
        return fn

    return deco


def make_plan(paradigm: str, domains: list[str], rehearsal: bool) -> Plan:
    """The plan for ``paradigm`` over ``domains`` (in order); ``rehearsal`` turns replay on."""
    if paradigm not in _PLANNERS:
        raise ConfigError(f"paradigm {paradigm!r} unknown; valid: {sorted(_PLANNERS)}.")
    return _PLANNERS[paradigm](domains, rehearsal)


def _specialists(domains: list[str], upto: int) -> dict[str, str | None]:
    return {d: (d if j <= upto else None) for j, d in enumerate(domains)}


@register_paradigm("specialized")
def _specialized(domains: list[str], rehearsal: bool) -> Plan:
    stages = [
        Stage(d, [Phase(d, [d])], views={"specialists": _specialists(domains, i)}) for i, d in enumerate(domains)
    ]
    return Plan([(d, "domain") for d in domains], stages, "specialists")


@register_paradigm("joint")
def _joint(domains: list[str], rehearsal: bool) -> Plan:
    stage = Stage("joint", [Phase(SHARED, list(domains))], views={SHARED: {d: SHARED for d in domains}})
    return Plan([(SHARED, "shared")], [stage], SHARED)


@register_paradigm("continual")
def _continual(domains: list[str], rehearsal: bool) -> Plan:
    stages = [
        Stage(d, [Phase(SHARED, [d], replay=rehearsal)], memorise=[d], views={SHARED: {x: SHARED for x in domains}})
        for d in domains
    ]
    return Plan([(SHARED, "shared")], stages, SHARED)


@register_paradigm("rehearsal")
def _rehearsal(domains: list[str], rehearsal: bool) -> Plan:
    stages = [
        Stage(
            d,
            [Phase(d, [d]), Phase(SHARED, [d], replay=rehearsal)],
            memorise=[d],
            views={SHARED: {x: SHARED for x in domains}, "specialists": _specialists(domains, i)},
        )
        for i, d in enumerate(domains)
    ]
    return Plan([(d, "domain") for d in domains] + [(SHARED, "shared")], stages, SHARED)
