"""One site's side of a federated run: its own data, its own rehearsal memory, local training and evaluation.

A :class:`SiteRuntime` never hands out data: :meth:`train` returns adapter tensors and sample
counts, :meth:`evaluate` returns aggregate metrics. The rehearsal memory (references into this
site's own train splits) lives in ``state_dir/memory.json`` on the site's disk.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._io import atomic_write_json, read_json_file, storage_errors
from ..data import DataError, load_domain
from ..errors import FederationError
from ..rehearsal import RehearsalBuffer
from ..training.batches import BatchSchedule, PixelStore, phase_batches
from ..training.evaluate import evaluate_view
from ..training.guards import check_finite_loss
from ..training.objectives import build_objective
from .model_setup import base_fingerprint, build_federated_model, frozen_digest, trainable_adapters
from .partition import partition_indices
from .payload import load_wire, wire_tensors
from .settings import FederatedConfig
from .site_optimizer import restore_site_optimizer, save_site_optimizer

MEMORY_FILE = "memory.json"
logger = logging.getLogger(__name__)


class SiteRuntime:
    """Site ``site`` of ``config``: loads the data it holds (relative paths resolved against ``data_dir``)."""

    def __init__(self, config: FederatedConfig, site: str, state_dir: str | Path, data_dir: str | Path | None = None) -> None:
        self.config = config
        self.site = config.federation.site(site).name
        self.state_dir = Path(state_dir)
        self.data = {}
        settings = config.federation.site(site)
        for d in config.run.domains:
            if d.name not in settings.data:
                continue
            block = config.site_data(site, d.name)
            if data_dir is not None and block.get("path") and not Path(block["path"]).is_absolute() and not str(block["path"]).startswith("medadapt:"):
                block["path"] = str(Path(data_dir) / block["path"])
            try:
                domain = load_domain(d.name, d.labels, block)
            except DataError as exc:
                raise FederationError(f"site {self.site!r} cannot load its data of domain {d.name!r}: {exc}") from exc
            partition = settings.partition(d.name)
            if partition is not None:
                train = domain.splits["train"]
                domain.splits["train"] = train.subset(partition_indices(train.labels, partition))
            self.data[d.name] = domain
        self.model, self.plan = build_federated_model(config.run)
        self.base = base_fingerprint(self.model)
        self.frozen = frozen_digest(self.model, trainable_adapters(self.plan))
        self.store = PixelStore(self.model.preprocess)
        for name, domain in self.data.items():
            for split in ("train", "test"):
                if split not in domain.splits:
                    raise FederationError(f"site {self.site!r}: domain {name!r} has no {split!r} split.")
                self.store.register(name, split, domain.splits[split])
        run = config.run
        self.buffer = RehearsalBuffer(run.rehearsal.size, run.rehearsal.policy, run.seed)
        self.memorised: list[int] = []
        self.objective = build_objective(self.model.family.objective)
        self._load_memory()

    # -- rehearsal memory, on this site's disk only --------------------------------------------
    def _load_memory(self) -> None:
        path = self.state_dir / MEMORY_FILE
        if not path.is_file():
            return
        state = read_json_file(path)
        if state.get("config") != self.config.fingerprint():
            logger.warning("site %s: %s belongs to another run configuration; starting with an empty memory.", self.site, path)
            return
        self.buffer.load_state_dict(state["buffer"])
        self.memorised = [int(s) for s in state["memorised"]]

    def _save_memory(self) -> None:
        with storage_errors(f"site {self.site!r} cannot write its rehearsal memory into {self.state_dir}"):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.state_dir / MEMORY_FILE, {"config": self.config.fingerprint(), "memorised": self.memorised, "buffer": self.buffer.state_dict()})

    def memorise_until(self, stage_index: int) -> None:
        """Add this site's share of every stage before ``stage_index`` to its memory (once per stage)."""
        changed = False
        for s in range(stage_index):
            if s in self.memorised:
                continue
            for d in self.plan.stages[s].memorise:
                if d in self.data:
                    self.buffer.add_stage(d, self.store.labels(d, "train"))
            self.memorised.append(s)
            changed = True
        if changed:
            self._save_memory()

    # -- checks --------------------------------------------------------------------------------
    def check_peer(self, base: str, config: str, frozen: str | None) -> None:
        """Refuse to work for a server whose base, run configuration or frozen LoRA A differ from this site's."""
        if base != self.base:
            raise FederationError(
                f"site {self.site!r} refuses the round: the server's base model (fingerprint {base[:12]}) differs from this "
                f"site's ({self.base[:12]}, {self.config.run.model!r}); both must load the same base weights."
            )
        if config != self.config.fingerprint():
            raise FederationError(f"site {self.site!r} refuses the round: its run configuration differs from the server's (fingerprint {config} vs {self.config.fingerprint()}).")
        if frozen is not None and frozen != self.frozen:
            raise FederationError(f"site {self.site!r} refuses the round: its frozen LoRA A matrices differ from the server's (ffa_lora needs the same seed and adapter settings).")

    # -- work ----------------------------------------------------------------------------------
    def train(self, stage_index: int, adapters: list[str], weights: Mapping[str, np.ndarray], round_index: int, epochs: int) -> tuple[dict[str, np.ndarray], dict[str, int], float]:
        """Train ``adapters`` (this stage's phases) from the received ``weights`` for ``epochs`` local epochs.

        Returns the adapters' tensors that travel, the samples each adapter trained on here (0 when
        this site holds nothing for it) and the mean training loss.
        """
        run, fed = self.config.run, self.config.federation
        if not 0 <= stage_index < len(self.plan.stages):
            raise FederationError(f"site {self.site!r}: stage {stage_index} is not in this run's plan of {len(self.plan.stages)} stages.")
        self.memorise_until(stage_index)
        load_wire(self.model, weights)
        counts: dict[str, int] = {name: 0 for name in adapters}
        losses: list[float] = []
        for phase in self.plan.stages[stage_index].phases:
            if phase.adapter not in adapters:
                continue
            pool = [(d, i) for d in phase.domains if d in self.data for i in range(len(self.data[d].splits["train"]))]
            replay = self.buffer if phase.replay and len(self.buffer) else None
            if not pool and replay is not None:  # nothing new here: the shared adapter rehearses this site's memory
                pool, replay = [(d, i) for d, i, _ in self.buffer.items()], None
            if not pool:
                continue
            key = f"{stage_index}:{phase.adapter}:{round_index}:{self.site}"
            schedule = BatchSchedule(pool, run.train.batch_size, epochs, run.seed, key, max_steps=run.train.max_steps_per_stage)
            losses += self._fit(phase.adapter, schedule, replay, (stage_index, round_index), f"stage {stage_index + 1} round {round_index + 1}")
            counts[phase.adapter] = len(pool)
        return wire_tensors(self.model, adapters, fed.aggregation), counts, float(np.mean(losses)) if losses else 0.0

    def _fit(self, adapter: str, schedule: BatchSchedule, replay: RehearsalBuffer | None, when: tuple[int, int], where: str) -> list[float]:
        run, keep = self.config.run, self.config.federation.keep_optimizer_state
        params = self.model.set_trainable([adapter])
        if self.config.federation.aggregation == "ffa_lora":
            for name, param in self.model.named_parameters():
                if f".lora_A.{adapter}." in name:
                    param.requires_grad_(False)
            params = [p for p in params if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=run.train.lr, weight_decay=run.train.weight_decay)
        if keep:
            restore_site_optimizer(self.state_dir, adapter, optimizer, self.config.fingerprint(), *when)
        self.objective.reset()
        self.model.train()
        losses = []
        try:
            for step, batch in enumerate(phase_batches(self.store, schedule, 0, replay, run.rehearsal.ratio, 0)):
                loss, report = self.objective(self.model, batch, adapter)
                check_finite_loss(loss, f"site {self.site!r} {where}, adapter {adapter!r}, step {step + 1}", run.train.lr, Path("."))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(report["loss"]))
            if keep:
                save_site_optimizer(self.state_dir, adapter, optimizer, self.config.fingerprint(), *when)
        finally:
            self.model.set_trainable([])
            self.model.eval()
        return losses

    def evaluate(self, weights: Mapping[str, np.ndarray], views: Mapping[str, Mapping[str, str | None]]) -> dict[str, float]:
        """``{"<view>|<domain>|<metric>": value}`` on the full test split of each domain this site holds."""
        load_wire(self.model, weights)
        out: dict[str, float] = {}
        for view, mapping in views.items():
            mine = {d: a for d, a in mapping.items() if d in self.data}
            if not mine:
                continue
            metrics = evaluate_view(self.model, self.store, mine, self.config.run.train.eval_batch_size)
            for domain, values in metrics.items():
                for metric, value in values.items():
                    if isinstance(value, (int, float)):
                        out[f"{view}|{domain}|{metric}"] = float(value) if math.isfinite(value) else float("nan")
        return out

    def summary(self) -> dict[str, Any]:
        """What a site tells the server when it joins: its name, base, configuration and the domains it holds."""
        return {"site": self.site, "base": self.base, "config": self.config.fingerprint(), "domains": sorted(self.data)}
