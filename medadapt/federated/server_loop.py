"""The server side of a federated continual run, on Flower's ``Grid`` (Message API).

For each stage of the paradigm's plan: ``rounds_per_stage`` rounds in which every connected site
trains the stage's adapters from the global tensors for ``local_epochs`` and replies; replies are
screened (:mod:`.screening`), aggregated (:mod:`.aggregation`) and the state is checkpointed
(:mod:`.server_state`). After the stage, sites holding each domain score it on its full test split,
and the server writes an ordinary medadapt save.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from .extra import require_flwr

require_flwr()

from flwr.app import Message, MessageType  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from .._io import storage_errors  # noqa: E402
from ..errors import FederationError  # noqa: E402
from ..training.outputs import run_results, strict_results, write_outputs  # noqa: E402
from .aggregation import add_dp_noise, replay_ratio_weights, weighted_mean  # noqa: E402
from .messages import METRICS, SITE, evaluate_content, parse_train_reply, query_content, train_config, train_content  # noqa: E402
from .model_setup import base_fingerprint, build_federated_model, frozen_digest, stage_adapters, trainable_adapters  # noqa: E402
from .payload import load_wire, nbytes, wire_tensors  # noqa: E402
from .screening import RoundUpdates, SiteUpdate, screen  # noqa: E402
from .secure_layout import SLOT_NAMES, SecureLayout  # noqa: E402
from .secure_round import SecureRequest, run_secure_round  # noqa: E402
from .server_state import ServerState, load_state, save_state  # noqa: E402
from .settings import FederatedConfig  # noqa: E402

logger = logging.getLogger(__name__)
ROUND_ATTEMPTS = 3


class FederatedServer:
    """Runs ``config`` over the sites reachable through ``grid``; :meth:`run` returns the results dict."""

    def __init__(self, config: FederatedConfig, grid: Grid, poll_s: float = 0.5) -> None:
        self.config = config
        self.grid = grid
        self.poll_s = poll_s
        self.out = Path(config.run.output_dir)
        self.model, self.plan = build_federated_model(config.run)
        self.checks = {"base": base_fingerprint(self.model), "config": config.fingerprint()}
        self.frozen = frozen_digest(self.model, trainable_adapters(self.plan))
        self.sites: dict[int, dict[str, Any]] = {}  # node id -> {"site", "domains"}
        self.rng = np.random.default_rng(config.run.seed)

    # -- sites ---------------------------------------------------------------------------------
    def _label(self, site: str) -> str:
        return self.config.federation.label(site)

    def _discover(self) -> None:
        """Ask nodes not yet known who they are; forget nodes that left."""
        nodes = set(self.grid.get_node_ids())
        for gone in set(self.sites) - nodes:
            logger.warning("site %s left the federation.", self._label(self.sites.pop(gone)["site"]))
        new = sorted(nodes - set(self.sites))
        if not new:
            return
        messages = [Message(query_content(self.checks), dst_node_id=n, message_type=MessageType.QUERY, group_id="hello") for n in new]
        for reply in self.grid.send_and_receive(messages, timeout=self.config.federation.round_timeout_s):
            node = reply.metadata.src_node_id
            if reply.has_error():
                logger.error("node %s cannot join: %s", node, reply.error.reason)
                continue
            info = dict(reply.content.config_records[SITE])
            names = [s.name for s in self.config.federation.sites]
            if info.get("site") not in names or any(v.get("site") == info.get("site") for v in self.sites.values()):
                logger.error("node %s claims site %r, which is not a free site of federation.sites; ignored.", node, info.get("site"))
                continue
            self.sites[node] = {"site": str(info["site"]), "domains": [str(d) for d in info.get("domains", [])]}

    def _wait_for_sites(self) -> None:
        fed = self.config.federation
        deadline = time.monotonic() + fed.round_timeout_s
        self._discover()
        while len(self.sites) < fed.min_sites:
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(self.sites)} site(s) joined within {fed.round_timeout_s:g} s; federation.min_sites is {fed.min_sites}.")
            time.sleep(self.poll_s)
            self._discover()

    # -- rounds --------------------------------------------------------------------------------
    def _round(self, stage: int, round_index: int) -> dict[str, Any]:
        fed = self.config.federation
        adapters = stage_adapters(self.plan, stage)
        sent = wire_tensors(self.model, adapters, fed.aggregation)
        checks = {**self.checks, **({"frozen": self.frozen} if fed.aggregation == "ffa_lora" else {})}
        config = train_config(stage, round_index, adapters, fed.local_epochs, checks, fed.privacy.clipping_norm)
        collect = self._collect_secure if fed.privacy.secure_aggregation else self._collect
        for attempt in range(ROUND_ATTEMPTS):
            self._wait_for_sites()
            got = collect(stage, round_index, attempt, sent, config)
            for site, reason in got.dropped:
                logger.error("round %d.%d: update of %s dropped: %s", stage + 1, round_index + 1, site, reason)
            if len(got.contributors) >= fed.min_sites:
                break
            logger.error("round %d.%d: %d usable update(s), fewer than min_sites=%d; retrying.", stage + 1, round_index + 1, len(got.contributors), fed.min_sites)
        else:
            raise FederationError(f"stage {stage + 1} round {round_index + 1}: fewer than {fed.min_sites} usable site updates in {ROUND_ATTEMPTS} attempts; the run stops here and resumes from the last completed round.")
        tensors, _ = weighted_mean(got.accepted, sent, self._weights(stage, got.accepted, got.memory_only))
        if fed.privacy.enabled:
            tensors = add_dp_noise(tensors, sent, fed.privacy.noise_multiplier, float(fed.privacy.clipping_norm), len(got.contributors), self.rng)
        load_wire(self.model, tensors)
        order = [s.name for s in fed.sites]
        sites = sorted(got.contributors, key=lambda u: order.index(u.site) if u.site in order else len(order))
        return {
            "stage": stage,
            "stage_name": self.plan.stages[stage].name,
            "round": round_index,
            "attempts": attempt + 1,
            "secure_aggregation": fed.privacy.secure_aggregation,
            "sites": [self._label(u.site) for u in sites if sum(u.counts.values()) > 0],
            "idle": [self._label(u.site) for u in sites if sum(u.counts.values()) == 0],
            "samples": {self._label(u.site): dict(u.counts) for u in sites},
            "adapter_samples": {a: sum(int(u.counts.get(a, 0)) for u in sites) for a in adapters},
            "loss": {self._label(u.site): u.loss for u in sites},
            "dropped": [{"site": self._label(site), "reason": reason} for site, reason in got.dropped],
            "failed": got.failed,
            "bytes_up": {self._label(u.site): u.bytes_up for u in sites},
            "bytes_down_per_site": nbytes(sent),
        }

    def _collect(self, stage: int, round_index: int, attempt: int, sent: dict[str, np.ndarray], config: dict[str, Any]) -> RoundUpdates:
        """Plain round: every site's tensors reach the server, which screens each before averaging."""
        fed = self.config.federation
        content = train_content(sent, config)
        group = f"stage{stage}-round{round_index}-try{attempt}"
        messages = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN, group_id=group) for n in sorted(self.sites)]
        replies = list(self.grid.send_and_receive(messages, timeout=fed.round_timeout_s))
        updates, failed = self._parse(replies, sorted(self.sites))
        result = screen(updates, sent, self.checks["base"], stage_adapters(self.plan, stage), fed.norm_outlier_factor)
        return RoundUpdates(result.accepted, result.accepted, result.dropped, failed)

    def _collect_secure(self, stage: int, round_index: int, attempt: int, sent: dict[str, np.ndarray], config: dict[str, Any]) -> RoundUpdates:
        """SecAgg+ round: the server gets only the sum of the sites' weighted updates, read back as group means."""
        fed = self.config.federation
        nodes = sorted(self.sites)
        slots, slot_of = self._slots(stage, nodes)
        layout = SecureLayout.build(sent, slots, fed.privacy.secure_max_weight, fed.privacy.secure_clipping_range)
        site = {n: str(self.sites[n]["site"]) for n in nodes}
        request = SecureRequest(site, config, sent, layout, slot_of, self.checks["base"], stage_adapters(self.plan, stage),
                                fed.round_timeout_s, stage * fed.rounds_per_stage + round_index + 1)
        outcome = run_secure_round(self.grid, request)
        groups = [SiteUpdate(name, -1, tensors, dict(counts), self.checks["base"]) for name, tensors, counts in outcome.groups]
        answered = {r.node_id for r in outcome.replies} | set(outcome.dropped)
        failed = []
        for node in nodes:
            if node not in answered:
                self.sites.pop(node, None)  # asked again when it comes back
                logger.error("site %s dropped out of the SecAgg+ round (no reply or an error reply).", self._label(site[node]))
                failed.append({"site": self._label(site[node]), "error": "dropped out of the SecAgg+ round"})
        return RoundUpdates(groups, outcome.replies if groups else [], [(site[n], reason) for n, reason in outcome.dropped.items()], failed, {SLOT_NAMES[1]})

    def _memory_only(self, phase: Any) -> set[str]:
        """The sites that hold none of ``phase``'s new data (they only rehearse their memory)."""
        return {s.name for s in self.config.federation.sites if not set(phase.domains) & set(s.data)}

    def _replay_phases(self, stage: int) -> list[Any]:
        """The phases of ``stage`` whose adapter is averaged with ``memory_weight: replay_ratio``."""
        fed, ratio = self.config.federation, self.config.run.rehearsal.ratio
        if fed.memory_weight != "replay_ratio" or not ratio > 0:
            return []
        return [phase for phase in self.plan.stages[stage].phases if phase.replay]

    def _slots(self, stage: int, nodes: list[int]) -> tuple[dict[str, int], dict[int, dict[str, int]]]:
        """SecAgg+ groups: per adapter how many (2 where memory-only sites weigh by replay ratio), per node its own."""
        slots: dict[str, int] = {}
        slot_of: dict[int, dict[str, int]] = {n: {} for n in nodes}
        for phase in self._replay_phases(stage):
            memory_only = self._memory_only(phase)
            if not any(self.sites[node]["site"] in memory_only for node in nodes):
                continue  # every connected site holds new data: one group, half the bytes
            slots[phase.adapter] = 2
            for node in nodes:
                slot_of[node][phase.adapter] = int(self.sites[node]["site"] in memory_only)
        return slots, slot_of

    def _weights(self, stage: int, updates: list[SiteUpdate], memory_only: set[str] | None = None) -> dict[str, dict[str, float]] | None:
        """``federation.memory_weight: replay_ratio``: per replaying adapter, its sites' weights in the mean (None: sample counts)."""
        phases = self._replay_phases(stage)
        if not phases:
            return None
        ratio = self.config.run.rehearsal.ratio
        return {p.adapter: replay_ratio_weights(updates, p.adapter, self._memory_only(p) if memory_only is None else memory_only, ratio) for p in phases}

    def _parse(self, replies: list[Message], asked: list[int]) -> tuple[list[SiteUpdate], list[dict[str, str]]]:
        updates, failed = [], []
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            site = self.sites.get(node, {}).get("site", f"node-{node}")
            label = self._label(site) if site in [s.name for s in self.config.federation.sites] else site
            if reply.has_error():
                logger.error("site %s failed the round: %s", label, reply.error.reason)
                failed.append({"site": label, "error": f"error reply (code {reply.error.code})"})
                continue
            tensors, counts, loss, base = parse_train_reply(reply.content)
            updates.append(SiteUpdate(site, node, tensors, counts, base, loss, nbytes(tensors)))
        for node in set(asked) - answered:
            site = self.sites.pop(node, {}).get("site", f"node-{node}")  # asked again when it comes back
            logger.error("site %s did not reply within the round's timeout.", site)
            failed.append({"site": self._label(site) if site in [s.name for s in self.config.federation.sites] else site, "error": "no reply"})
        return updates, failed

    # -- evaluation and saves ------------------------------------------------------------------
    def _evaluate(self, stage: int) -> dict[str, dict[str, dict[str, float]]]:
        views = self.plan.stages[stage].views
        domains = [d.name for d in self.config.run.domains]
        order = {s.name: i for i, s in enumerate(self.config.federation.sites)}
        self._discover()
        assigned: dict[int, list[str]] = {}
        for d in domains:
            holders = sorted((order[v["site"]], n) for n, v in self.sites.items() if d in v["domains"])
            if holders:
                assigned.setdefault(holders[0][1], []).append(d)
            else:
                logger.error("no connected site holds domain %r; its accuracy after stage %d is unknown (NaN).", d, stage + 1)
        everything = wire_tensors(self.model, trainable_adapters(self.plan), everything=True)
        messages = [
            Message(evaluate_content(everything, {v: {d: m[d] for d in ds} for v, m in views.items()}, self.checks), dst_node_id=n, message_type=MessageType.EVALUATE, group_id=f"eval{stage}")
            for n, ds in assigned.items()
        ]
        values: dict[str, float] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.config.federation.round_timeout_s):
            if reply.has_error():
                logger.error("evaluation at node %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            values.update({k: float(v) for k, v in reply.content.metric_records[METRICS].items()})
        out: dict[str, dict[str, dict[str, float]]] = {}
        for view in views:
            out[view] = {}
            for d in domains:
                prefix = f"{view}|{d}|"
                metrics = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
                out[view][d] = metrics or {"accuracy": float("nan"), "auroc": float("nan")}
        return out

    def _save(self, stage: int, history: list[dict[str, Any]]) -> None:
        fed = self.config.federation
        for adapter in stage_adapters(self.plan, stage):
            rounds = [h for h in history if h["stage"] == stage]
            samples: dict[str, int] = {}
            for h in rounds:
                for site, counts in h["samples"].items():
                    samples[site] = samples.get(site, 0) + int(counts.get(adapter, 0))
            self.model.provenance[adapter] = {
                "federated": {
                    "stage": self.plan.stages[stage].name,
                    "rounds": len(rounds),
                    "sites": sorted({s for h in rounds for s in h["sites"] if samples.get(s)}),
                    "samples_per_site": samples,
                    "aggregation": fed.aggregation,
                    "local_epochs": fed.local_epochs,
                }
            }
        with storage_errors(f"cannot write the model save into {self.out}"):
            self.model.save_pretrained(self.out)

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train every stage (resuming after the last completed round), evaluate, save; returns the results."""
        fed = self.config.federation
        loaded = load_state(self.out, self.config.fingerprint())
        if loaded is not None:
            state, tensors = loaded
            load_wire(self.model, tensors)
            logger.info("resuming after %d completed round(s): stage %d, round %d.", state.completed_rounds(), state.stage + 1, state.round + 1)
        else:
            state = ServerState(config=self.config.fingerprint())
        started = time.perf_counter() - state.elapsed
        everything = lambda: wire_tensors(self.model, trainable_adapters(self.plan), everything=True)  # noqa: E731
        for stage in range(state.stage, len(self.plan.stages)):
            for round_index in range(state.round, fed.rounds_per_stage):
                state.history.append(self._round(stage, round_index))
                state.round = round_index + 1
                state.elapsed = time.perf_counter() - started
                save_state(self.out, state, everything())
            metrics = self._evaluate(stage)
            for view, per_domain in metrics.items():
                state.rows.setdefault(view, []).append([per_domain[d.name].get("accuracy", float("nan")) for d in self.config.run.domains])
            state.metrics.append(metrics)
            self._save(stage, state.history)
            state.stage, state.round = stage + 1, 0
            state.elapsed = time.perf_counter() - started
            save_state(self.out, state, everything())
        results = self._results(state, time.perf_counter() - started)
        self.model.extras["results"] = strict_results({k: results[k] for k in ("paradigm", "domains", "stages", "accuracy_matrix", "acc", "bwt", "forgetting", "final_metrics")})
        with storage_errors(f"cannot write the results into {self.out}"):
            self.model.save_pretrained(self.out)
            write_outputs(self.out, results)
        return results

    def _results(self, state: ServerState, wall: float) -> dict[str, Any]:
        run, plan = self.config.run, self.plan
        rows = {v: [[float("nan") if x is None else x for x in row] for row in r] for v, r in state.rows.items()}
        primary = plan.primary_view
        config = run.to_dict()
        config["domains"] = [{k: v for k, v in d.items() if k != "data"} for d in config["domains"]]  # no data paths
        up = [b for h in state.history for b in h["bytes_up"].values()]
        results: dict[str, Any] = {
            **run_results(run, [s.name for s in plan.stages], primary, rows, state.metrics[-1][primary]),
            "num_processes": 1,
            "wall_time_s": wall,
            "config": config,
            "federation": {
                **self.config.public_summary(),
                "rounds": state.history,
                "completed_rounds": state.completed_rounds(),
                "bytes_up_total": int(sum(up)),
                "bytes_up_per_site_round": float(np.mean(up)) if up else 0.0,
                "bytes_down_total": int(sum(h["bytes_down_per_site"] * len(h["sites"]) for h in state.history)),
            },
        }
        if primary != "specialists" and "specialists" in rows:
            results["specialist_accuracy_matrix"] = rows["specialists"]
        if not all(math.isfinite(x) for row in results["accuracy_matrix"] for x in row):
            logger.warning("some domains could not be evaluated (no connected site held them): their accuracies are NaN.")
        return results
