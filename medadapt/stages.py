"""The stage table: the stages a model holds, and the one resolver of what serves a row.

Words, one meaning each (the rest of the package follows them):

* a **stage** is one named slot of a model: a *domain* (labels, prompt, and its own adapter or
  none) or a *shared* adapter. Stages are added in order; a save keeps one folder per stage.
  (A continual-learning step of a training plan is a *training stage* in :mod:`medadapt.training`.)
* an adapter **kind** is how an adapter adapts the base (``"lora"``, ``"prompt"``; see
  :mod:`medadapt.adapters.kind`). A backbone family's way of scoring labels is its *scoring*
  (:attr:`medadapt.families.BackboneFamily.scoring`) and an image tower's shape its *layout*
  (:func:`medadapt.families.towers.tower_layout`), not kinds.

:class:`Served` is *what serves a row*: the LoRA-like adapters active together on the base and at
most one adapter of a kind that does not stack (a prompt adapter). It is frozen and hashable, so
scorers use it as their cache key. :meth:`StageTable.serve` is the only place a user's
``(domain, adapter)`` becomes a :class:`Served`; training and evaluation ask it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, MutableMapping, Sequence

from .adapters import adapter_kind
from .domains import Domain, validate_name
from .errors import AdapterError, DomainError, RoutingError

DOMAIN = "domain"  # a stage's role: a domain with labels (and its own adapter, or none)
SHARED = "shared"  # a stage's role: an adapter not tied to one domain's labels
BASE = "base"  # as an adapter argument: the frozen base alone
AUTO_FALLBACK = "auto"  # as a router fallback: the shared adapter "shared", or the only one


@dataclass(frozen=True)
class Served:
    """What serves a row: ``loras`` (active together on the base, in order) and at most one
    ``prompt`` adapter (a kind that does not stack: a prompt or a head adapter). ``Served()`` is the frozen base."""

    loras: tuple[str, ...] = ()
    prompt: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every adapter of the stack, LoRAs first."""
        return self.loras + ((self.prompt,) if self.prompt is not None else ())

    @property
    def is_base(self) -> bool:
        return not self.names

    @property
    def stacked(self) -> bool:
        """Whether more than one adapter serves the row."""
        return len(self.names) > 1

    def ref(self) -> str | tuple[str, ...] | None:
        """The adapter argument a user would write for this value (a name, a tuple of names, or None)."""
        names = self.names
        return None if not names else names[0] if len(names) == 1 else names

    @classmethod
    def of(cls, adapter: "Served | str | Sequence[str] | None", prompts: Any = ()) -> "Served":
        """``adapter`` (a Served, a name, names, or None) as a Served; names in ``prompts`` (a container
        of the adapters whose kind does not stack) go to :attr:`prompt`. Does not validate the names:
        :meth:`StageTable.serve` does."""
        if isinstance(adapter, Served):
            return adapter
        names = [] if adapter is None or adapter == BASE else [adapter] if isinstance(adapter, str) else list(adapter)
        alone = [n for n in names if n in prompts]
        return cls(tuple(n for n in names if n not in prompts), alone[0] if alone else None)


BASE_SERVED = Served()


@dataclass
class Stage:
    """One stage: its name, role (:data:`DOMAIN` or :data:`SHARED`), adapter kind (None: a domain
    without an adapter of its own), its :class:`Domain` (domains only) and where it was loaded from."""

    name: str
    role: str
    kind: str | None
    domain: Domain | None = None
    provenance: dict[str, Any] | None = None


class _Provenance(MutableMapping):
    """``{stage name: provenance}`` for the stages that have one; writes go to the stages."""

    def __init__(self, table: "StageTable") -> None:
        self.table = table

    def __getitem__(self, name: str) -> dict[str, Any]:
        stage = self.table.stages.get(name)
        if stage is None or stage.provenance is None:
            raise KeyError(name)
        return stage.provenance

    def __setitem__(self, name: str, value: dict[str, Any]) -> None:
        if name not in self.table.stages:
            raise KeyError(name)
        self.table.stages[name].provenance = value

    def __delitem__(self, name: str) -> None:
        self[name]  # KeyError when absent
        self.table.stages[name].provenance = None

    def __iter__(self) -> Iterator[str]:
        return (n for n, s in self.table.stages.items() if s.provenance is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class StageTable:
    """The stages of one model in the order they were added (see the module docstring)."""

    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}
        self.provenance: MutableMapping[str, dict[str, Any]] = _Provenance(self)

    # -- bookkeeping ---------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.stages

    def __getitem__(self, name: str) -> Stage:
        return self.stages[name]

    @property
    def order(self) -> list[str]:
        """Every stage (domains and shared adapters) in the order they were added."""
        return list(self.stages)

    @property
    def domains(self) -> dict[str, Domain]:
        return {n: s.domain for n, s in self.stages.items() if s.domain is not None}

    @property
    def shared(self) -> dict[str, str]:
        """Shared adapter name -> adapter kind."""
        return {n: s.kind for n, s in self.stages.items() if s.role == SHARED and s.kind is not None}

    def names(self) -> list[str]:
        """The stages that hold an adapter, in order."""
        return [n for n, s in self.stages.items() if s.kind is not None]

    def check_new_name(self, name: str, what: str = "domain") -> None:
        """Raise :class:`DomainError` unless ``name`` is a valid, unused stage name."""
        validate_name(name, what)
        if name in self.stages:
            role = "domain" if self.stages[name].role == DOMAIN else "shared adapter"
            raise DomainError(f"{what} {name!r} already exists (as a {role}); remove it first or pick another name.")

    def add(self, stage: Stage) -> Stage:
        """Append ``stage`` (its name checked; a domain's ``adapter_type`` follows its kind)."""
        self.check_new_name(stage.name, "domain" if stage.role == DOMAIN else "shared adapter")
        if stage.domain is not None:
            stage.domain.adapter_type = stage.kind or "none"
        self.stages[stage.name] = stage
        return stage

    def remove(self, name: str) -> Stage:
        if name not in self.stages:
            self.unknown_domain(name)
        return self.stages.pop(name)

    def unknown_domain(self, name: Any) -> None:
        raise DomainError(f"unknown domain {name!r}; known domains: {list(self.domains) or 'none (add one with add_domain)'}.")

    def get_domain(self, name: Any) -> Domain:
        """The domain ``name``, or a :class:`DomainError` listing the known ones."""
        stage = self.stages.get(name) if isinstance(name, str) else None
        if stage is None or stage.domain is None:
            self.unknown_domain(name)
        return stage.domain

    def kind(self, name: str) -> str:
        """The adapter kind of stage ``name``; :class:`AdapterError` when it holds no adapter."""
        stage = self.stages.get(name) if isinstance(name, str) else None
        if stage is None or stage.kind is None:
            raise AdapterError(f"unknown adapter {name!r}; known: {self.names() or 'none'}.")
        return stage.kind

    # -- what serves a row ---------------------------------------------------------------------
    def _stack(self, names: Sequence[str], unknown: str) -> Served:
        for n in names:
            stage = self.stages.get(n)
            if stage is None or stage.kind is None:
                raise AdapterError(unknown.format(name=n))
        alone = [n for n in names if not adapter_kind(self.stages[n].kind).stacks]
        if len(alone) > 1:
            raise AdapterError(f"at most one prompt adapter can be stacked (prompt and head adapters do not stack), got {alone}.")
        return Served(tuple(n for n in names if n not in alone), alone[0] if alone else None)

    def serve(self, domain: str, adapter: "str | Sequence[str] | Served | None" = None) -> Served:
        """What serves a row of ``domain``: its own adapter (``adapter=None``; the base when it has none),
        the frozen base (``"base"``), or the named adapter(s) (domains or shared, at most one prompt)."""
        spec = self.get_domain(domain)
        if isinstance(adapter, Served):
            return self._stack(adapter.names, "unknown adapter {name!r}.")
        if adapter is None:
            return BASE_SERVED if spec.adapter_type == "none" else self._stack([domain], "unknown adapter {name!r}.")
        if isinstance(adapter, str) and adapter == BASE:
            return BASE_SERVED
        names = [adapter] if isinstance(adapter, str) else list(adapter)
        return self._stack(names, f"unknown adapter {{name!r}}; use 'base', a domain name {list(self.domains)} or a shared adapter {list(self.shared)}.")

    def serve_named(self, adapter: "str | Sequence[str] | None") -> Served:
        """What serves a row not tied to a domain: ``None``/``"base"`` the frozen base, else the named adapter(s)."""
        if adapter is None or (isinstance(adapter, str) and adapter == BASE):
            return BASE_SERVED
        names = [adapter] if isinstance(adapter, str) else list(adapter)
        return self._stack(names, f"unknown adapter {{name!r}}; known: {self.names() or 'none'}.")

    # -- routing -------------------------------------------------------------------------------
    def fallback(self, option: str | None) -> str | None:
        """The shared adapter serving unrouted images: ``"auto"`` picks ``shared`` or the only shared adapter."""
        shared = self.shared
        if option == AUTO_FALLBACK:
            if "shared" in shared:
                return "shared"
            return next(iter(shared)) if len(shared) == 1 else None
        if option is None or option == BASE:
            return None
        if option not in shared:
            raise RoutingError(f"fallback {option!r} is not a shared adapter of this model; shared adapters: {list(shared) or 'none'}.")
        return option

    def serve_routed(self, domain: str, fallback: str | None, adapter: str | None = None) -> Served:
        """What serves an image routed to ``domain``: ``adapter`` if given, else the domain's own adapter,
        else (a domain without one, as in joint training) the router's ``fallback``."""
        served = self.serve(domain, adapter)
        if adapter is None and served.is_base and fallback is not None:
            return self.serve_named(fallback)
        return served

    # -- manifest ------------------------------------------------------------------------------
    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``domains``, ``shared`` and ``stage_order`` sections."""
        return {
            "domains": [s.domain.to_dict() for s in self.stages.values() if s.domain is not None],
            "shared": [{"name": n, "adapter_type": s.kind} for n, s in self.stages.items() if s.role == SHARED],
            "stage_order": self.order,
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "StageTable":
        """The stages a (validated) manifest lists, with their domains; no adapter is built."""
        domains = {d["name"]: d for d in manifest.get("domains", [])}
        shared = {s["name"]: s["adapter_type"] for s in manifest.get("shared", [])}
        table = cls()
        for name in manifest.get("stage_order", []):
            if name in domains:
                domain = Domain(**domains[name])
                kind = None if domain.adapter_type == "none" else domain.adapter_type
                table.stages[name] = Stage(name, DOMAIN, kind, domain)
            else:
                table.stages[name] = Stage(name, SHARED, shared.get(name))
        return table
