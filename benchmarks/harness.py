"""What the benchmark scripts share: interleaved timing on two clocks, the trainer's inner step,
resident-memory reads, targets judged from measured values *and* correctness flags, and the
results file (written atomically through ``medadapt._io``).

The scripts (``speed.py``, ``generative_speed.py``) sit beside this module, so ``import harness``
works when they are run as ``python benchmarks/<script>.py``; importing this module also puts the
repository root first on ``sys.path``, so the benchmarks measure this checkout's medadapt rather
than whichever one is installed.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's medadapt

import torch  # noqa: E402

CLOCKS = ("cpu", "wall")
Sample = tuple[float, float]  # (cpu seconds, wall seconds) of one timed block, per call
OPERATORS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
Target = tuple[str, float] | None  # (comparison, threshold); None = reported without a target

# the generative benchmarks' sample task: five finding labels, and short VQA pairs in the style of
# VQA-RAD (written for these benchmarks; no data files needed)
LABELS = ["normal", "pneumonia", "effusion", "nodule", "fracture"]
QUESTION = "Which finding does this chest x-ray show? {}"
QA = [
    ("Which plane is this image taken in?", "axial"),
    ("What organ is shown?", "the brain"),
    ("Where is the lesion located?", "right upper lobe"),
    ("What imaging modality is this?", "ct with contrast"),
    ("What is abnormal about the liver?", "hypodense lesion"),
    ("Which side is the effusion on?", "left"),
    ("What is the dark area in the lungs?", "air"),
    ("How many lesions are seen?", "one"),
]


# -- timing -----------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values))


def pick(samples: list[Sample], clock: str) -> list[float]:
    return [s[CLOCKS.index(clock)] for s in samples]


def med(samples: list[Sample], clock: str) -> float:
    """Median seconds of ``samples`` on ``clock``."""
    return median(pick(samples, clock))


def ratio(a: list[Sample], b: list[Sample]) -> dict[str, float]:
    """median(a) / median(b) on both clocks."""
    return {clock: med(a, clock) / med(b, clock) for clock in CLOCKS}


def interleaved(sides: dict[str, Callable[[], Sample]], repeats: int) -> dict[str, list[Sample]]:
    """Run each side's timed block ``repeats`` times, interleaved ABAB with the order alternating."""
    names = list(sides)
    times: dict[str, list[Sample]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            times[n].append(sides[n]())
    return times


def timed(fn: Callable[[], Any], n: int = 1) -> Sample:
    """(process CPU seconds, wall seconds) per call of ``fn`` over ``n`` consecutive calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n


def summary(samples: list[Sample], clock: str) -> dict[str, Any]:
    out: dict[str, Any] = {"median_s": med(samples, clock)}
    for c in CLOCKS:
        values = pick(samples, c)
        out[c] = {"median_s": median(values), "min_s": min(values), "repeats_s": [round(v, 6) for v in values]}
    return out


# -- training step ----------------------------------------------------------------------------------
def medadapt_trainer_step(model: Any, objective: Any, adapter: str, lr: float = 1e-3) -> Callable[[Any], float]:
    """The trainer's inner step (see medadapt/training/trainer.py ``_run_phase``), on one adapter."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    params = model.set_trainable([adapter])
    optimizer = accelerator.prepare_optimizer(torch.optim.AdamW(params, lr=lr, weight_decay=0.0), device_placement=False)
    objective.reset()
    model.train()

    def step(batch: Any) -> float:
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, report = objective(model, batch, adapter)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return report["loss"]

    return step


def race_steps(ours: Callable[[Any], float], base: Callable[[Any], float], batch: Any, s: Any) -> tuple[dict[str, list[float]], dict[str, list[Sample]]]:
    """Two steps of each training loop (their losses, to compare), warm-up, then interleaved timings."""
    losses = {"medadapt": [ours(batch), ours(batch)], "peft": [base(batch), base(batch)]}
    for _ in range(s.warmup - 2):
        ours(batch), base(batch)
    times = interleaved(
        {"medadapt": lambda: timed(lambda: ours(batch), s.train_steps), "peft": lambda: timed(lambda: base(batch), s.train_steps)},
        s.train_repeats,
    )
    return losses, times


# -- memory -----------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """This process's resident memory now (psutil when installed, else Linux ``/proc/self/statm``)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct tensors in ``module.state_dict()`` (shared tensors counted once)."""
    seen, total = set(), 0
    for t in module.state_dict().values():
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


# -- targets ----------------------------------------------------------------------------------------
def check(target: Target, value: float, flags: Mapping[str, bool] | None = None, cause: str | None = None) -> dict[str, Any]:
    """A target judged from its measured ``value`` and its correctness ``flags``.

    The target passes only when ``value`` meets ``(op, threshold)`` (``op`` evaluated as written:
    ``>=`` is ``>=``) and every flag is true: a fast but wrong path does not pass. A miss carries
    ``cause`` (its measured reason) and, when a flag failed, which one.
    """
    flags = {k: bool(v) for k, v in (flags or {}).items()}
    if target is None:
        return {"value": value, "target": None, "pass": None, **({"correct": flags} if flags else {})}
    op, threshold = target
    meets = OPERATORS[op](value, threshold)
    wrong = [k for k, ok in flags.items() if not ok]
    out: dict[str, Any] = {"value": value, "target": f"{op} {threshold}", "pass": bool(meets and not wrong)}
    if flags:
        out["correct"] = flags
    reasons = []
    if wrong:
        reasons.append(f"correctness check failed: {', '.join(wrong)} is false, so the timed path is not the right computation")
    if not meets and cause:
        reasons.append(cause)
    if reasons:
        out["cause"] = "; ".join(reasons)
    return out


# -- the results file -------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
    }


def versions() -> dict[str, str]:
    import peft
    import transformers

    import medadapt

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "medadapt": medadapt.__version__,
    }
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def results_record(values: dict[str, float], targets: dict[str, Any], mode: str, settings: Any, clock: str,
                   measurements: dict[str, Any], stamps: dict[str, float], started: float, **extra: Any) -> dict[str, Any]:
    """The results file's content: headline values, targets, settings, machine and timings (``extra`` first)."""
    return {
        **extra,
        "schema": 1,
        **{k: round(v, 4) for k, v in values.items()},
        "targets": targets,
        "all_pass": all(t["pass"] is not False for t in targets.values()),
        "quick": mode != "full",
        "mode": mode,
        "settings": asdict(settings),
        "clock": clock,
        "torch_threads": torch.get_num_threads(),
        "machine": machine_info(),
        "versions": versions(),
        "measurements": measurements,
        "section_seconds": stamps,
        "total_seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(path: Path, record: dict[str, Any]) -> None:
    """The results JSON (keys in the record's order), written atomically by ``medadapt._io``."""
    from medadapt._io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
