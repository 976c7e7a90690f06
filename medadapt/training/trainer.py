"""The Accelerate training loop: executes a paradigm's plan stage by stage, with rehearsal,
checkpoints that survive SIGKILL, evaluation after every stage and the run's outputs.

In :mod:`medadapt.training` a *stage* is always a **training stage** (one continual step of the plan);
the slots a model holds are the stage table's stages (:mod:`medadapt.stages`).

Gradients of the (small) trainable adapter parameters are averaged across processes explicitly,
so the same code runs on one CPU, one GPU or many processes without wrapping the model in DDP
(whose parameter set could not change from one phase to the next).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .._io import atomic_write_json, storage_errors
from ..errors import SaveLockedError, TrainingError
from ..data import DataError, load_domain
from ..families.image_token_cache import ImageCacheSettings
from ..model import ContinualVLM
from ..rehearsal import RehearsalBuffer
from ..tiny import tiny_base, tiny_names
from .batches import BatchSchedule, PixelStore, phase_batches
from .checkpoint import MODEL_DIR, STATE_NAME, latest_checkpoint, read_state, restore_adapters, restore_optimizer, restore_rng, save_checkpoint
from .config import ConfigError, RunConfig, model_not_found
from .composition import RouterFeatureCache, composition_results, fit_stage_router, trained_domains
from .consistency import buffers_agree
from .evaluate import evaluate_view
from .objectives import build_objective
from .data_fingerprint import check_same_data, data_fingerprint
from .launch import check_distributed_type, check_launch_environment, resolve_launch
from .memory import checkpointing_train_mode, enable_gradient_checkpointing, fp32_master_weights, prepare_quantized_base
from .outputs import RUN_FILE, lock_output_dir, run_results, strict_json, strict_results, write_outputs
from .resume_check import CHECKPOINTED_KEY, check_loop_state, mark_checkpointed, resume_checkpoint
from .trackers import log_stage
from .guards import check_finite_loss, check_finite_params
from .paradigms import Plan, make_plan
from .progress import PhaseProgress

CHECKPOINT_DIR = "checkpoints"
logger = logging.getLogger(__name__)


def build_base(config: RunConfig) -> ContinualVLM:
    """The frozen base named by ``config.model`` (the ``tiny-*`` models of :mod:`medadapt.tiny` are built in)."""
    if config.model in tiny_names():
        return ContinualVLM(tiny_base(config.model, seed=0))
    try:
        return ContinualVLM.from_base(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code, quantization=config.quantization)
    except OSError as exc:  # not a folder, and the Hub said no or could not be reached
        raise model_not_found(config.model, exc) from exc


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"train.lr": 0.005, ...}`` with scalar values (what trackers accept)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


@dataclass
class LoopState:
    """Where the run is: next phase/step, finished stages' metrics, buffer and elapsed time."""

    phase: int = 0
    step: int = 0
    rows: dict[str, list[list[float]]] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    buffer: dict[str, Any] | None = None
    elapsed: float = 0.0


class ContinualTrainer:
    """Run one configured experiment: ``ContinualTrainer(config).run()`` returns ``results``."""

    def __init__(
        self, config: RunConfig, resume: bool = False, overwrite: bool = False, accelerator: Any = None, progress: bool = True,
        resume_anyway: bool = False, datasets: Mapping[str, Any] | None = None,
    ) -> None:
        """``resume_anyway`` continues a ``resume`` even though the training data changed since the run started.

        ``datasets``: ``{domain name: in-memory data}`` read instead of that domain's ``data.path``/``data.dataset``:
        a ``datasets.DatasetDict`` (or a dict of ``Dataset`` per split), or one ``Dataset`` with a split column.
        The domain's ``data`` still names the format (``hf`` for image/label, ``vqa`` for image/question/answer),
        its columns and splits, e.g. ``data: {format: hf, columns: {image: img, label: finding}}``.

        Mixed precision and gradient accumulation come from ``accelerate launch`` / ``accelerate config`` unless
        the run config sets them (see :mod:`medadapt.training.launch`); FSDP, DeepSpeed and Megatron-LM are refused.
        """
        from accelerate import Accelerator

        check_launch_environment()
        self.config = config
        self.resume = resume
        self.resume_anyway = resume_anyway
        self.overwrite = overwrite
        self.progress = progress
        self.launch = resolve_launch(config.train)
        self.accelerator = accelerator or Accelerator(
            mixed_precision=self.launch.mixed_precision,
            gradient_accumulation_steps=self.launch.grad_accum_steps,
            log_with=config.tracking.log_with,
            project_dir=config.output_dir,  # where file-based trackers (tensorboard, ...) write
            cpu=not torch.cuda.is_available(),
        )
        check_distributed_type(self.accelerator)
        self.out = Path(config.output_dir)
        self.datasets = dict(datasets or {})
        unknown = sorted(set(self.datasets) - {d.name for d in config.domains})
        if unknown:
            raise ConfigError(f"datasets= names {unknown}, which are not domains of the config {[d.name for d in config.domains]}.")
        self._output_lock = ExitStack()  # output_dir's writer lock, held from setup to the end of run()

    # -- setup -----------------------------------------------------------------------------------
    def _check_output(self) -> None:
        error: Exception | None = None
        if self.accelerator.is_main_process:
            try:
                self._output_lock = lock_output_dir(self.config, self.resume, self.overwrite)
            except (ConfigError, SaveLockedError) as exc:
                error = exc
        flags = self._all_processes([error is not None])
        if any(flags):
            raise error or ConfigError(f"output_dir {self.out} check failed on the main process.")

    def _all_processes(self, values: list[Any]) -> list[Any]:
        if self.accelerator.num_processes == 1:
            return values
        from accelerate.utils import gather_object

        return gather_object(values)

    def setup(self) -> None:
        """Validate config, data and output dir; build the model, plan, buffer. Trains nothing.

        Data and model are checked before the output dir, so a bad input never clears (``--overwrite``)
        an earlier run. Every process seeds the same way, and rank 0's initial adapter weights are then
        broadcast once, so adapters start identical on all ranks. ``train.gradient_checkpointing`` and a
        quantized base (``quantization``) are prepared here (:mod:`medadapt.training.memory`).
        """
        from accelerate.utils import set_seed

        cfg = self.config
        if cfg.tracking.log_with not in (None, "all") and not self.accelerator.log_with:
            raise ConfigError(f"tracking.log_with={cfg.tracking.log_with!r}, but that tracker's package is not installed.")
        self.data = {}
        for d in cfg.domains:
            domain = load_domain(d.name, d.labels, d.data, source=self.datasets.get(d.name))
            for split in ("train", "test"):
                if split not in domain.splits:
                    raise DataError(f"domain {d.name!r} has no {split!r} split; its data gives {sorted(domain.splits)}.")
            self.data[d.name] = domain
            if len(set(domain.splits["train"].labels.tolist())) < 2 and d.task == "classification":
                logger.warning(
                    "domain %r: its training split holds a single class (%s); the adapter learns nothing to tell "
                    "classes apart and AUROC will be undefined (null) where the test split is one class too.",
                    d.name, sorted(set(domain.splits["train"].labels.tolist())),
                )
        self.data_fingerprint = data_fingerprint(self.data, {d.name: d.data.get("path") for d in cfg.domains})
        self.model = build_base(cfg)
        if cfg.quantization is not None:
            prepare_quantized_base(self.model, cfg.train.gradient_checkpointing)
        set_seed(cfg.seed)  # peft draws LoRA init from the global torch RNG: same start on every run and rank
        names = [d.name for d in cfg.domains]
        self.plan: Plan = make_plan(cfg.paradigm, names, cfg.rehearsal.size > 0)
        targets = self.model.family.default_lora_targets(self.model.base_model)
        own = {n for n, kind in self.plan.adapters if kind == "domain"}
        for d in cfg.domains:
            self.model.add_domain(d.name, self.data[d.name].labels, d.prompt, adapter=cfg.adapter.build(targets) if d.name in own else "none", seed=cfg.seed, task=d.task)
        for name, kind in self.plan.adapters:
            if kind == "shared":
                self.model.add_shared_adapter(name, adapter=(cfg.shared_adapter or cfg.adapter).build(targets), seed=cfg.seed)
        self.model.to(self.accelerator.device)
        self._broadcast_adapters()
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.store = PixelStore(self.model.preprocess)
        self.router_cache = RouterFeatureCache()  # frozen-base routing features, reused by every stage's router fit
        for name, domain in self.data.items():
            for split in ("train", "test"):
                self.store.register(name, split, domain.splits[split])
        self.buffer = RehearsalBuffer(cfg.rehearsal.size, cfg.rehearsal.policy, cfg.seed)
        self.objective = build_objective(self.model.family.objective)
        self.state = LoopState()
        self._resume_optimizer: tuple[Path, dict[str, Any]] | None = None
        self._check_output()
        if self.resume:
            folder = resume_checkpoint(self.out, self.out / CHECKPOINT_DIR, self.out / RUN_FILE)  # verified, or None
            if folder is not None:
                self._restore(folder)

    def _broadcast_adapters(self) -> None:
        """Copy every adapter's initial weights from rank 0 to the other processes (once, at setup)."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import broadcast

        params = [p for name in self.model.adapter_names() for p in self.model.adapter_parameters(name)]
        if not params:
            return
        flat = broadcast(torch.cat([p.detach().flatten().float() for p in params]).to(self.accelerator.device), from_process=0)
        offset = 0
        with torch.no_grad():
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype))
                offset += p.numel()

    def _phases(self) -> list[tuple[int, Any]]:
        return [(i, p) for i, stage in enumerate(self.plan.stages) for p in stage.phases]

    def _schedule(self, phase_index: int, phase: Any) -> BatchSchedule:
        cfg, acc = self.config, self.accelerator
        pool = [(d, i) for d in phase.domains for i in range(len(self.data[d].splits["train"]))]
        return BatchSchedule(
            pool, cfg.train.batch_size, cfg.train.epochs, cfg.seed, f"{phase_index}:{phase.adapter}",
            acc.num_processes, acc.process_index, cfg.train.max_steps_per_stage,
        )

    def _phase_steps(self) -> list[int]:
        return [self._schedule(i, phase).steps for i, (_, phase) in enumerate(self._phases())]

    def _restore(self, folder: Path) -> None:
        """Load a verified checkpoint (adapters by name, loop state, buffer, optimizer, RNG, GradScaler)."""
        state = read_state(folder)
        if state.get("fingerprint") != self.config.fingerprint():
            raise ConfigError("checkpoint belongs to another configuration; cannot resume.")
        check_loop_state(state, self._phase_steps(), len(self.plan.stages), self.config.train.lr, self.config.train.weight_decay, folder / STATE_NAME)
        self.data_changes = check_same_data(state.get("data"), self.data_fingerprint, self.out, self.resume_anyway)
        restore_adapters(folder / MODEL_DIR, self.model)
        loop = dict(state["loop"])
        loop["metrics"] = [_nan_for_null(m) for m in loop["metrics"]]
        loop["rows"] = {view: [[float("nan") if v is None else v for v in row] for row in rows] for view, rows in loop["rows"].items()}
        self.state = LoopState(**loop)
        if self.state.buffer:
            self.buffer.load_state_dict(self.state.buffer)
        self._resume_optimizer = (folder, state.get("optimizer") or {})
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(folder, state.get("rng"))

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self, optimizer: Any) -> None:
        self.state.buffer = self.buffer.state_dict()
        self.state.elapsed = time.perf_counter() - self._started  # a resumed run's includes the interrupted part
        if self.accelerator.is_main_process:
            loop, _ = strict_json(dict(self.state.__dict__))  # NaN metrics (one-class AUROC) as null
            state = {"fingerprint": self.config.fingerprint(), "loop": loop, "data": self.data_fingerprint}
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            with storage_errors(f"cannot write a checkpoint into {self.out / CHECKPOINT_DIR}"):
                save_checkpoint(self.out / CHECKPOINT_DIR, self.model, optimizer, state)
                mark_checkpointed(self.out / RUN_FILE)
        self.accelerator.wait_for_everyone()

    # -- training --------------------------------------------------------------------------------
    def _sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        flat = self.accelerator.reduce(flat, reduction="mean")
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _run_phase(self, stage_index: int, phase_index: int, phase: Any) -> None:
        cfg, acc = self.config, self.accelerator
        stage = self.plan.stages[stage_index]
        schedule = self._schedule(phase_index, phase)
        start = self.state.step if self.state.phase == phase_index else 0
        if start == 0:
            self._initialise_from_data(phase)
        params = self.model.set_trainable([phase.adapter])
        fp32_master_weights(params)  # a bf16/fp16 base: the optimizer updates float32 adapter weights
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        if start and self._resume_optimizer:
            restore_optimizer(self._resume_optimizer[0], optimizer, self._resume_optimizer[1])
        self._resume_optimizer = None
        optimizer = acc.prepare_optimizer(optimizer, device_placement=False)
        self.objective.reset()
        self.model.train()
        checkpointing_train_mode(self.model, True)
        bar = PhaseProgress(
            schedule.steps, start, f"stage {stage_index + 1}/{len(self.plan.stages)} {stage.name} [{phase.adapter}]",
            enabled=self.progress and acc.is_main_process,
        )
        buffer = self.buffer if phase.replay else None
        tick, seen = time.perf_counter(), 0
        accum = self.launch.grad_accum_steps
        acc.gradient_accumulation_steps = accum  # acc.backward divides by it (accelerate keeps it process-global)
        first_step = sum(self._phase_steps()[:phase_index])  # trackers' step: counted over the whole run
        batches = phase_batches(self.store, schedule, start, buffer, cfg.rehearsal.ratio, cfg.train.dataloader_workers)
        for step, batch in zip(range(start, schedule.steps), batches):
            # accumulation boundaries follow the phase's own step count (not accelerate's global
            # counter), so a resumed run and every phase step exactly where an uninterrupted run does
            with acc.autocast():
                loss, report = self.objective(self.model, batch, phase.adapter)
            check_finite_loss(loss, f"stage {stage_index + 1} ({stage.name}), adapter {phase.adapter!r}, step {step + 1}", cfg.train.lr, self.out)
            acc.backward(loss)  # divides by grad_accum_steps
            if (step + 1) % accum == 0 or step + 1 == schedule.steps:
                self._sync_gradients(params)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                check_finite_params(params, f"stage {stage_index + 1} ({stage.name}), adapter {phase.adapter!r}, step {step + 1}", cfg.train.lr, self.out)
            seen += len(batch) * acc.num_processes
            rate = seen / max(time.perf_counter() - tick, 1e-9)
            bar.update(report["loss"], rate)
            if cfg.tracking.log_with:
                acc.log({f"{phase.adapter}/loss": report["loss"], f"{phase.adapter}/acc": report["acc"]}, step=first_step + step + 1)
            self.state.phase, self.state.step = phase_index, step + 1
            if (step + 1) % cfg.train.checkpoint_every == 0 and (step + 1) % accum == 0 and step + 1 < schedule.steps:
                self._checkpoint(optimizer)
        bar.close()
        checkpointing_train_mode(self.model, False)
        self.model.set_trainable([])
        self.state.phase, self.state.step = phase_index + 1, 0

    def _initialise_from_data(self, phase: Any, limit: int = 4096) -> None:
        """Before a phase's first step, start an adapter of a kind initialised from data (a head) from
        its domain's training images (at most ``limit``, in order; every rank computes the same)."""
        if phase.adapter not in self.model.domains or not self.model.adapters.kind_of(phase.adapter).initialised_from_data:
            return
        domain = phase.adapter
        labels = self.store.labels(domain, "train")[:limit]
        size = self.config.train.eval_batch_size
        chunks = [list(range(i, min(i + size, len(labels)))) for i in range(0, len(labels), size)]
        with self.model.evaluating():
            decided = self.model.initialise_adapter(domain, (self.store.pixels(domain, "train", c) for c in chunks), torch.as_tensor(labels))
        logger.info("adapter %r started from %d training images: %s", domain, len(labels), decided)

    def _last_phase(self, stage_index: int) -> int:
        return max(i for i, (s, _) in enumerate(self._phases()) if s == stage_index)

    def _evaluate_stage(self, stage_index: int) -> None:
        stage = self.plan.stages[stage_index]
        names = [d.name for d in self.config.domains]
        stage_metrics = {}
        for view, mapping in stage.views.items():
            metrics = evaluate_view(self.model, self.store, mapping, self.config.train.eval_batch_size, self.accelerator)
            self.state.rows.setdefault(view, []).append([metrics[d]["accuracy"] for d in names])
            stage_metrics[view] = metrics
        self.state.metrics.append(stage_metrics)
        if self.config.tracking.log_with:
            log_stage(self.accelerator, self.plan, self.state.rows, stage_metrics, names, stage_index, sum(self._phase_steps()[: self._last_phase(stage_index) + 1]))
        for d in stage.memorise:
            self.buffer.add_stage(d, self.store.labels(d, "train"))
        digest = hashlib.sha256(json.dumps(self.buffer.state_dict(), sort_keys=True).encode()).hexdigest()
        weights = hashlib.sha256()
        for name in self.model.adapter_names():
            for param in self.model.adapter_parameters(name):
                weights.update(param.detach().float().cpu().numpy().tobytes())
        digests = self._all_processes([(digest, weights.hexdigest())])
        if len({d for d, _ in digests}) != 1:
            raise TrainingError("rehearsal buffers differ across processes; refusing to continue.")
        if len({w for _, w in digests}) != 1:
            raise TrainingError("adapter weights differ across processes (gradients out of sync); refusing to continue.")
        fit_stage_router(self.model, self.store, trained_domains(self.plan, stage_index), cache=self.router_cache)  # saved with the stage

    def run(self) -> dict[str, Any]:
        """Train every stage, evaluate after each, write outputs; returns the results dict."""
        try:
            return self._run()
        finally:
            self._output_lock.close()  # finished or failed: another process may now write output_dir

    def _run(self) -> dict[str, Any]:
        if not hasattr(self, "model"):
            self.setup()
        train = self.config.train
        settings = ImageCacheSettings(train.image_cache_mb << 20, train.image_cache_spill_mb << 20, str(self.out),
                                      f"image_token_cache.rank{self.accelerator.process_index}.bin")
        with self.model.scorer.caching_images(settings) as cache:  # rebuilt in every run: a resumed one too
            self.image_cache = cache
            return self._run_stages()

    def _run_stages(self) -> dict[str, Any]:
        acc, cfg = self.accelerator, self.config
        if cfg.tracking.log_with:
            acc.init_trackers(cfg.tracking.project, config=_flat(cfg.to_dict()))
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            marker = {CHECKPOINTED_KEY: True} if latest_checkpoint(self.out / CHECKPOINT_DIR) else {}
            with storage_errors(f"cannot write into output_dir {self.out}"):
                atomic_write_json(self.out / RUN_FILE, {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict(), "data": self.data_fingerprint, **marker})
        self._started = time.perf_counter() - self.state.elapsed
        phases = self._phases()
        for phase_index, (stage_index, phase) in enumerate(phases):
            if phase_index < self.state.phase:
                continue
            self._run_phase(stage_index, phase_index, phase)
            last_of_stage = phase_index + 1 == len(phases) or phases[phase_index + 1][0] != stage_index
            if last_of_stage:
                self._evaluate_stage(stage_index)
                if acc.is_main_process:
                    self.model.save_pretrained(self.out)
                self._checkpoint(None)
        results = self._results(time.perf_counter() - self._started)
        if acc.is_main_process:
            self.model.extras["results"] = strict_results({k: results[k] for k in ("paradigm", "domains", "stages", "accuracy_matrix", "acc", "bwt", "forgetting", "final_metrics")})
            self.model.save_pretrained(self.out)
            with storage_errors(f"cannot write the results into {self.out}"):
                write_outputs(self.out, results)
        acc.wait_for_everyone()
        if cfg.tracking.log_with:
            acc.end_training()
        return results

    def _results(self, wall: float) -> dict[str, Any]:
        cfg, plan = self.config, self.plan
        primary = plan.primary_view
        results: dict[str, Any] = {
            **run_results(cfg, [s.name for s in plan.stages], primary, self.state.rows, self.state.metrics[-1][primary]),
            "buffer": {"size": cfg.rehearsal.size, "policy": cfg.rehearsal.policy, "items": len(self.buffer)},
            "buffer_consistent": buffers_agree(self.buffer, self._all_processes),
            "num_processes": self.accelerator.num_processes,
            "launch": {
                **self.launch.to_dict(),
                "mixed_precision": str(self.accelerator.mixed_precision),  # a caller's accelerator may differ
                "distributed_type": str(getattr(self.accelerator.distributed_type, "value", self.accelerator.distributed_type)),
                "gradient_checkpointing": cfg.train.gradient_checkpointing,
                "dataloader_workers": cfg.train.dataloader_workers,
            },
            "wall_time_s": wall,
            "config": cfg.to_dict(),
        }
        if getattr(self, "data_changes", None):
            results["resumed_on_changed_data"] = self.data_changes
        if getattr(self, "image_cache", None) is not None:
            results["image_cache"] = self.image_cache.stats()
        if primary != "specialists" and "specialists" in self.state.rows:
            results["specialist_accuracy_matrix"] = self.state.rows["specialists"]
        results.update(composition_results(self.model, self.store, plan, cfg.train.eval_batch_size, self.accelerator, self.state.metrics[-1]))
        return results


def _nan_for_null(metrics: Any) -> Any:
    """A checkpoint's stage metrics with JSON ``null`` back to NaN (how the loop keeps undefined values)."""
    if isinstance(metrics, dict):
        return {k: _nan_for_null(v) for k, v in metrics.items()}
    return float("nan") if metrics is None else metrics
