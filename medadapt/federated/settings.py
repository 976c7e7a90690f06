"""The ``federation:`` block of a run config: sites, the data each holds, rounds, aggregation, privacy.

A federated run config is an ordinary medadapt run config (``model``, ``paradigm``, ``domains``,
``adapter``, ``rehearsal``, ``train``, ...) plus this block; :func:`load_federated_config` reads
both and checks them before anything trains.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..errors import ConfigError
from ..training.config import RunConfig, load_config, merge_config, parse_overrides, read_config_file

AGGREGATIONS = ("fedavg", "ffa_lora")
"""``fedavg``: sample-weighted mean of every adapter tensor (LoRA A and B averaged separately, as
FlowerTune's baselines do); ``ffa_lora``: exact aggregation of the LoRA update, with A frozen at its
shared seeded initialisation and only B trained and averaged (FFA-LoRA, Sun et al. 2024), so that
mean(B_k)·A = mean(B_k·A). ``exact`` is accepted as another name for ``ffa_lora``."""

PARTITION_KEYS = ("num", "index", "alpha", "seed")


MEMORY_WEIGHTS = {
    "samples": "a site that trains the shared adapter on its rehearsal memory alone weighs its memory's size",
    "replay_ratio": "such sites together weigh rehearsal.ratio / (1 - ratio) times the new data's samples, as in a centralized rehearsal batch",
}
"""How the mean weighs sites that hold none of a stage's new data and only rehearse their memory."""


@dataclass
class Partition:
    """A Dirichlet label-skew share of one dataset's train split (a simulation helper)."""

    num: int
    index: int
    alpha: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num, int) or self.num < 1:
            raise ConfigError(f"partition.num must be an integer >= 1, got {self.num!r}.")
        if not isinstance(self.index, int) or not 0 <= self.index < self.num:
            raise ConfigError(f"partition.index must be in [0, {self.num}), got {self.index!r}.")
        if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"partition.alpha must be > 0, got {self.alpha!r}.")


@dataclass
class SiteSettings:
    """One site (a hospital): its ``name`` and, per domain it holds, a data block overriding that domain's."""

    name: str
    data: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"federation.sites: a site name must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.data, dict):
            raise ConfigError(f"federation.sites[{self.name}].data must map domain names to data blocks, got {type(self.data).__name__}.")
        for domain, block in self.data.items():
            if not isinstance(block, dict):
                raise ConfigError(f"federation.sites[{self.name}].data.{domain} must be a data block (a mapping), got {block!r}.")

    def partition(self, domain: str) -> Partition | None:
        """This site's partition of ``domain``'s train split, or None (the whole split)."""
        raw = self.data.get(domain, {}).get("partition")
        if raw is None:
            return None
        if not isinstance(raw, dict) or set(raw) - set(PARTITION_KEYS):
            raise ConfigError(f"federation.sites[{self.name}].data.{domain}.partition must be a mapping with keys {list(PARTITION_KEYS)}, got {raw!r}.")
        return Partition(**raw)


@dataclass
class PrivacySettings:
    """Client-side differential privacy with fixed clipping, and secure aggregation (both Flower's own).

    ``clipping_norm``: each site's update (new - received adapter tensors) is clipped to this L2 norm
    (Flower's ``fixedclipping_mod``); ``noise_multiplier``: the server adds Gaussian noise of std
    ``noise_multiplier * clipping_norm / n`` to the mean of ``n`` clipped updates.
    ``secure_aggregation``: rounds run Flower's SecAgg+ (``secaggplus_mod`` + ``SecAggPlusWorkflow``),
    so the server sees only the sum of the sites' weighted updates; each entry of a site's weighted
    update (``samples / secure_max_weight`` times its change) must lie within ``secure_clipping_range``
    (a site refuses otherwise: SecAgg+'s quantisation would clip it silently)."""

    clipping_norm: float | None = None
    noise_multiplier: float = 0.0
    secure_aggregation: bool = False
    secure_clipping_range: float = 1.0
    secure_max_weight: float = 1000.0

    def __post_init__(self) -> None:
        if self.clipping_norm is not None and not self.clipping_norm > 0:
            raise ConfigError(f"federation.privacy.clipping_norm must be > 0 (or empty for no clipping), got {self.clipping_norm!r}.")
        if self.noise_multiplier < 0:
            raise ConfigError(f"federation.privacy.noise_multiplier must be >= 0, got {self.noise_multiplier!r}.")
        if self.noise_multiplier > 0 and self.clipping_norm is None:
            raise ConfigError("federation.privacy.noise_multiplier needs a clipping_norm (the noise is scaled by it).")
        if not isinstance(self.secure_aggregation, bool):
            raise ConfigError(f"federation.privacy.secure_aggregation must be true or false, got {self.secure_aggregation!r}.")
        for key in ("secure_clipping_range", "secure_max_weight"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"federation.privacy.{key} must be a number > 0, got {value!r}.")

    @property
    def enabled(self) -> bool:
        """Whether sites clip their updates (and the server adds noise when ``noise_multiplier`` > 0)."""
        return self.clipping_norm is not None


@dataclass
class FederationSettings:
    """``federation:``: the sites, rounds per stage, local epochs per round, aggregation and safeguards."""

    sites: list[SiteSettings] = field(default_factory=list)
    rounds_per_stage: int = 3
    local_epochs: int = 1
    aggregation: str = "fedavg"
    min_sites: int = 2
    round_timeout_s: float = 600.0
    norm_outlier_factor: float = 10.0
    public_site_names: bool = False
    keep_optimizer_state: bool = True
    memory_weight: str = "replay_ratio"
    privacy: PrivacySettings = field(default_factory=PrivacySettings)

    def __post_init__(self) -> None:
        if self.aggregation == "exact":
            self.aggregation = "ffa_lora"
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"federation.aggregation {self.aggregation!r} unknown; valid: {list(AGGREGATIONS)} (or 'exact' for ffa_lora).")
        for key in ("rounds_per_stage", "local_epochs", "min_sites"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"federation.{key} must be an integer >= 1, got {value!r}.")
        if self.memory_weight not in MEMORY_WEIGHTS:
            raise ConfigError(f"federation.memory_weight {self.memory_weight!r} unknown; valid: {list(MEMORY_WEIGHTS)}.")
        if not isinstance(self.keep_optimizer_state, bool):
            raise ConfigError(f"federation.keep_optimizer_state must be true or false, got {self.keep_optimizer_state!r}.")
        if not self.round_timeout_s > 0:
            raise ConfigError(f"federation.round_timeout_s must be > 0, got {self.round_timeout_s!r}.")
        if not self.norm_outlier_factor > 1:
            raise ConfigError(f"federation.norm_outlier_factor must be > 1, got {self.norm_outlier_factor!r}.")
        names = [s.name for s in self.sites]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"federation.sites lists site(s) {twice} more than once; each site must appear once.")
        if len(self.sites) < self.min_sites:
            raise ConfigError(f"federation lists {len(self.sites)} site(s), fewer than federation.min_sites={self.min_sites}.")
        if self.privacy.secure_aggregation and self.min_sites < 2:
            raise ConfigError("federation.privacy.secure_aggregation needs federation.min_sites >= 2: a sum over one site reveals that site's update.")

    def site(self, name: str) -> SiteSettings:
        """The site called ``name`` (a clear error lists the configured ones)."""
        for site in self.sites:
            if site.name == name:
                return site
        raise ConfigError(f"site {name!r} is not in federation.sites {[s.name for s in self.sites]}.")

    def holders(self, domain: str) -> list[str]:
        """The sites that hold data of ``domain``, in config order."""
        return [s.name for s in self.sites if domain in s.data]

    def label(self, name: str) -> str:
        """How results and provenance name a site: its name when ``public_site_names``, else ``site-<n>``."""
        index = [s.name for s in self.sites].index(name)
        return name if self.public_site_names else f"site-{index + 1}"


@dataclass
class FederatedConfig:
    """A run config plus its federation block (``run`` is an ordinary :class:`RunConfig`)."""

    run: RunConfig
    federation: FederationSettings

    def site_data(self, site: str, domain: str) -> dict[str, Any]:
        """The data block of ``domain`` at ``site``: the domain's block with the site's keys over it (no ``partition``)."""
        base = next(d.data for d in self.run.domains if d.name == domain)
        block = {**copy.deepcopy(base), **copy.deepcopy(self.federation.site(site).data[domain])}
        block.pop("partition", None)
        return block

    def fingerprint(self) -> str:
        """Hash of what every party must agree on (training settings, stages, aggregation): no data paths."""
        run = self.run.to_dict()
        for key in ("output_dir", "tracking"):
            run.pop(key, None)
        run["domains"] = [{k: v for k, v in d.items() if k != "data"} for d in run["domains"]]
        fed = dataclasses.asdict(self.federation)
        fed["sites"] = [s["name"] for s in fed["sites"]]
        fed.pop("round_timeout_s", None)
        fed.pop("keep_optimizer_state", None)  # each site's own choice; runs from before the option still resume
        fed.pop("memory_weight", None)  # the server's own choice (sites train the same either way); older runs still resume
        blob = json.dumps({"run": run, "federation": fed}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def public_summary(self) -> dict[str, Any]:
        """The federation settings that results and provenance may record (no data paths, sites anonymised)."""
        fed = self.federation
        return {
            "sites": [fed.label(s.name) for s in fed.sites],
            "rounds_per_stage": fed.rounds_per_stage,
            "local_epochs": fed.local_epochs,
            "aggregation": fed.aggregation,
            "min_sites": fed.min_sites,
            "keep_optimizer_state": fed.keep_optimizer_state,
            "memory_weight": fed.memory_weight,
            "privacy": dataclasses.asdict(fed.privacy),
        }


def _federation(raw: Any, run: RunConfig) -> FederationSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"federation must be a mapping, got {type(raw).__name__}.")
    fields = {f.name for f in dataclasses.fields(FederationSettings)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {['federation.' + k for k in unknown]}; valid: {sorted(fields)}.")
    raw = dict(raw)
    sites_raw = raw.pop("sites", None)
    if not isinstance(sites_raw, list) or not sites_raw:
        raise ConfigError("federation.sites must be a non-empty list of sites (each with a name and its data).")
    sites = []
    for i, s in enumerate(sites_raw):
        if not isinstance(s, dict) or set(s) - {"name", "data"}:
            raise ConfigError(f"federation.sites[{i}] must be a mapping with keys name and data, got {s!r}.")
        sites.append(SiteSettings(name=s.get("name"), data=s.get("data") or {}))
    privacy_raw = raw.pop("privacy", None) or {}
    if not isinstance(privacy_raw, dict) or set(privacy_raw) - {f.name for f in dataclasses.fields(PrivacySettings)}:
        raise ConfigError(f"federation.privacy must be a mapping with keys {[f.name for f in dataclasses.fields(PrivacySettings)]}, got {privacy_raw!r}.")
    try:
        fed = FederationSettings(sites=sites, privacy=PrivacySettings(**privacy_raw), **raw)
    except TypeError as exc:
        raise ConfigError(f"federation: {exc}") from exc
    domains = [d.name for d in run.domains]
    for site in fed.sites:
        unknown_domains = sorted(set(site.data) - set(domains))
        if unknown_domains:
            raise ConfigError(f"federation.sites[{site.name}] holds data of {unknown_domains}, which are not in domains {domains}.")
        for domain in site.data:
            site.partition(domain)
            _check_data_block(FederatedConfig(run, fed), site.name, domain)
    orphans = [d for d in domains if not fed.holders(d)]
    if orphans:
        raise ConfigError(f"no site holds domain(s) {orphans}; add them to a site's data under federation.sites.")
    return fed


def _check_data_block(config: FederatedConfig, site: str, domain: str) -> None:
    from ..data import DataConfig, DataError

    try:
        DataConfig.from_dict(config.site_data(site, domain))
    except DataError as exc:
        raise ConfigError(f"federation.sites[{site}].data.{domain}: {exc}") from exc


def load_federated_config(path: str | Path, overrides: list[str] | None = None) -> FederatedConfig:
    """Read a run config with a ``federation:`` block (``overrides`` like ``federation.rounds_per_stage=2``)."""
    data = read_config_file(path)
    if data.get("federation") is None:
        raise ConfigError(f"config file {path} has no `federation:` block; a federated run needs one (see README 'Federated training').")
    return federated_config_from_dict(merge_config(data, parse_overrides(overrides or [])))


def federated_config_from_dict(data: dict[str, Any]) -> FederatedConfig:
    """The same as :func:`load_federated_config`, from an in-memory mapping (tests, the benchmark)."""
    data = copy.deepcopy(data)
    fed_raw = data.pop("federation", None)
    if fed_raw is None:
        raise ConfigError("the config has no `federation:` block.")
    run = load_config(None, defaults=data)
    return FederatedConfig(run=run, federation=_federation(fed_raw, run))
