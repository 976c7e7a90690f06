#!/usr/bin/env python
"""Speed benchmarks for medadapt on CPU: training overhead, frozen-tower reuse, mixed-domain
inference and adapter scaling. Writes one JSON file (atomically).

Every ratio is measured in the same run against a baseline built in the same process, with the
two sides interleaved (ABAB, alternating which goes first) and summarised by medians, so machine
speed cancels out. Run from the repository root::

    python benchmarks/speed.py            # full run, a few minutes on 2 CPU cores
    python benchmarks/speed.py --quick    # same keys, < 60 s, noisier
    python benchmarks/speed.py --out /tmp/speed.json

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

# measure the medadapt of this checkout (an editable install elsewhere would otherwise win)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "speed.json"

LABELS = ["normal", "pneumonia", "effusion", "nodule", "fracture"]
PROMPT = "a medical image showing {}."
LORA_TARGETS = ["q_proj", "v_proj"]
VISION_ONLY_TARGETS = r".*vision_model.*(q_proj|v_proj)"


@dataclass
class Settings:
    """Sizes and repeat counts of one mode."""

    hidden: int = 128  # tiny CLIP hidden size (both towers), 2 layers
    image_size: int = 64  # 8x8 patches of 8 pixels
    batch: int = 32  # training batch
    lora_r: int = 8
    warmup: int = 3  # untimed steps per side before timing
    train_repeats: int = 21  # interleaved timed blocks per side
    train_steps: int = 3  # training steps per timed block
    frozen_repeats: int = 15
    infer_images: int = 64
    infer_domains: int = 4
    infer_repeats: int = 13
    loop_repeats: int = 5  # image-by-image loops (slow side)
    n_stages: int = 20
    load_repeats: int = 7  # fresh models loading all stages in order
    scaling_images: int = 64
    scaling_domains: tuple[int, ...] = (4, 16, 64)  # distinct domains in the mixed batch (keys are named by these)
    scaling_repeats: int = 9
    n_many: int = 100  # sequential loads for adapter_load_ratio_100_vs_1 / memory_100_adapters_ratio
    many_repeats: int = 3
    memory_hidden_check: int = 768  # a second memory probe at a realistic hidden size (diagnostic; 0 = skip)
    memory_fresh_process: bool = True  # probe memory in a fresh process (smoke: in this one, meaningless numbers)


MODES = {
    "full": Settings(),
    "quick": Settings(warmup=2, train_repeats=5, train_steps=2, frozen_repeats=5, infer_repeats=4, loop_repeats=1, load_repeats=2,
                      scaling_repeats=3, many_repeats=1, memory_hidden_check=0),
    # smoke: only checks the script runs end to end (used by the test-suite); numbers are meaningless
    "smoke": Settings(hidden=32, image_size=32, batch=8, warmup=1, train_repeats=1, train_steps=1, frozen_repeats=1,
                      infer_images=8, infer_repeats=1, loop_repeats=1, n_stages=3, load_repeats=1,
                      scaling_images=8, scaling_repeats=1, n_many=10, many_repeats=1, memory_hidden_check=0,
                      memory_fresh_process=False),
}

# key -> (comparison, threshold); None = reported without a target
TARGETS: dict[str, tuple[str, float] | None] = {
    "train_step_ratio": ("<=", 1.10),
    "frozen_tower_speedup": (">", 1.0),
    "mixed_batch_ratio": ("<=", 1.3),
    "mixed_vs_per_image_speedup": (">", 1.0),
    "adapter_load_ratio_20_vs_1": ("<=", 1.2),
    "adapter_load_total_s_20": None,
    "memory_per_adapter_ratio": ("<=", 1.5),
    "mixed_batch_ratio_4": None,
    "mixed_batch_ratio_16": None,
    "mixed_batch_ratio_64": ("<=", 1.3),
    "peft_mixed_ratio_64": None,
    "adapter_load_ratio_100_vs_1": ("<=", 1.2),
    "adapter_load_total_s_100": None,
    "memory_100_adapters_ratio": ("<=", 1.2),
    "text_only_epoch_speedup": (">=", 3.0),
    "predict_overhead_ratio": ("<=", 1.10),
}


SECTION_KEYS = {
    "training_overhead": ["train_step_ratio"],
    "frozen_tower_reuse": ["frozen_tower_speedup"],
    "mixed_domain_inference": ["mixed_batch_ratio", "mixed_vs_per_image_speedup"],
    "adapter_scaling": ["adapter_load_ratio_20_vs_1", "adapter_load_total_s_20", "memory_per_adapter_ratio"],
    "many_domain_mixed_batch": ["mixed_batch_ratio_4", "mixed_batch_ratio_16", "mixed_batch_ratio_64", "peft_mixed_ratio_64"],
    "many_adapters": ["adapter_load_ratio_100_vs_1", "adapter_load_total_s_100", "memory_100_adapters_ratio"],
    "text_only_epochs": ["text_only_epoch_speedup"],
    "predict_overhead": ["predict_overhead_ratio"],
}


# -- helpers ----------------------------------------------------------------------------------------
CLOCKS = ("cpu", "wall")
CLOCK = "cpu"  # which clock the headline numbers use; set by run()
Sample = tuple[float, float]  # (cpu seconds, wall seconds) of one timed block, per call


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def pick(samples: list[Sample], clock: str | None = None) -> list[float]:
    return [s[CLOCKS.index(clock or CLOCK)] for s in samples]


def med(samples: list[Sample], clock: str | None = None) -> float:
    """Median seconds of ``samples`` on ``clock`` (default: the run's clock)."""
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


def summary(samples: list[Sample]) -> dict[str, Any]:
    out: dict[str, Any] = {"median_s": med(samples)}
    for clock in CLOCKS:
        values = pick(samples, clock)
        out[clock] = {"median_s": median(values), "min_s": min(values), "repeats_s": [round(v, 6) for v in values]}
    return out


def lora_config(targets: Any, r: int) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, bias="none")


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


def rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def fresh_model(s: Settings) -> Any:
    from medadapt import ContinualVLM
    from medadapt.tiny import tiny_backbone

    return ContinualVLM(tiny_backbone("clip", seed=0, image_size=s.image_size, hidden=s.hidden))


def training_batch(s: Settings, domain: str = "scan") -> Any:
    from medadapt.training.objectives import Batch

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(s.batch, 3, s.image_size, s.image_size, generator=g)
    labels = torch.randint(0, len(LABELS), (s.batch,), generator=g)
    return Batch(pixels, labels, [domain] * s.batch)


# -- 1. training overhead ---------------------------------------------------------------------------
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


def peft_baseline_step(s: Settings, lr: float = 1e-3) -> Callable[[Any], float]:
    """A hand-written peft + torch loop doing the same forward/backward on an identical model."""
    from peft import get_peft_model

    from medadapt.tiny import tiny_backbone

    backbone = tiny_backbone("clip", seed=0, image_size=s.image_size, hidden=s.hidden)
    torch.manual_seed(1)
    model = get_peft_model(backbone.model, lora_config(list(LORA_TARGETS), s.lora_r))
    texts = [PROMPT.format(label) for label in LABELS]
    tokens = backbone.tokenizer(texts, padding=True, truncation=True, max_length=backbone.text_max_length(), return_tensors="pt")
    input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()

    def step(batch: Any) -> float:
        image = model.get_image_features(pixel_values=batch.pixel_values).pooler_output
        text = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        loss = F.cross_entropy(logits, batch.labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

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


def bench_training(s: Settings) -> dict[str, Any]:
    from medadapt.training.objectives import ClassificationObjective

    batch = training_batch(s)
    model = fresh_model(s)
    torch.manual_seed(1)
    model.add_domain("scan", LABELS, PROMPT, adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    ours = medadapt_trainer_step(model, ClassificationObjective(), "scan")
    base = peft_baseline_step(s)
    # same weights, LoRA init and batch: both loops must see the same losses (2nd step: after one AdamW update)
    losses, times = race_steps(ours, base, batch, s)
    ratios = ratio(times["medadapt"], times["peft"])
    paired = median([a / b for a, b in zip(pick(times["medadapt"]), pick(times["peft"]))])
    return {
        "value": ratios[CLOCK],
        "ratio_by_clock": ratios,
        "paired_ratio_median": paired,
        "medadapt_step": summary(times["medadapt"]),
        "peft_baseline_step": summary(times["peft"]),
        "steps_per_repeat": s.train_steps,
        "first_losses": losses,
        "same_losses": all(abs(a - b) < 1e-4 for a, b in zip(losses["medadapt"], losses["peft"])),
        "text_tower_trainable": bool(model.text_tower_trainable("scan")),
        "setup": f"tiny CLIP hidden {s.hidden}, image {s.image_size}, batch {s.batch}, {len(LABELS)} labels, "
        f"LoRA r={s.lora_r} on q/v of both towers, AdamW",
    }


# -- 2. frozen-tower reuse --------------------------------------------------------------------------
def bench_frozen_tower(s: Settings) -> dict[str, Any]:
    from medadapt.training.objectives import ClassificationObjective

    batch = training_batch(s)
    model = fresh_model(s)
    torch.manual_seed(1)
    model.add_domain("scan", LABELS, PROMPT, adapter=lora_config(VISION_ONLY_TARGETS, s.lora_r))
    trainable_text = bool(model.text_tower_trainable("scan"))
    cached_obj, uncached_obj = ClassificationObjective(), ClassificationObjective(cache_text=False)
    cached = medadapt_trainer_step(model, cached_obj, "scan")
    uncached = medadapt_trainer_step(model, uncached_obj, "scan")  # same model, same parameters/optimiser kind
    for _ in range(s.warmup):
        cached(batch), uncached(batch)
    hits = model.scorer.label_cache_hits
    cached(batch), uncached(batch)
    cache_used = model.scorer.label_cache_hits == hits + 1  # a hit for the cached objective's step, none for the other
    times = interleaved(
        {"cached": lambda: timed(lambda: cached(batch), s.train_steps), "recomputed": lambda: timed(lambda: uncached(batch), s.train_steps)},
        s.frozen_repeats,
    )
    return {
        "value": ratio(times["recomputed"], times["cached"])[CLOCK],
        "ratio_by_clock": ratio(times["recomputed"], times["cached"]),
        "cached_step": summary(times["cached"]),
        "recomputed_step": summary(times["recomputed"]),
        "steps_per_repeat": s.train_steps,
        "text_tower_trainable": trainable_text,
        "cache_used": cache_used,
        "setup": f"LoRA r={s.lora_r} target_modules={VISION_ONLY_TARGETS!r}; ClassificationObjective() vs (cache_text=False)",
    }


# -- 3. mixed-domain inference ----------------------------------------------------------------------
def bench_mixed(s: Settings) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    model = fresh_model(s)
    names = [f"domain{i}" for i in range(s.infer_domains)]
    for i, name in enumerate(names):
        torch.manual_seed(10 + i)
        model.add_domain(name, LABELS[: 2 + i % 3], f"{name} image of {{}}.", adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (s.image_size, s.image_size, 3), dtype=np.uint8)) for _ in range(s.infer_images)]
    domains = [names[i % len(names)] for i in range(s.infer_images)]

    def single() -> Any:
        return model.predict_proba(images, domain=names[0])

    def mixed() -> Any:
        return model.predict_proba(images, domain=domains)

    def per_image() -> Any:
        return [model.predict_proba(image, domain=d) for image, d in zip(images, domains)]

    # the mixed batch must give what per-domain calls give
    mixed_out = mixed()
    agree = all(torch.allclose(mixed_out[i], per_image_row, atol=1e-5) for i, per_image_row in
                ((i, model.predict_proba(images[i], domain=domains[i])[0]) for i in range(min(8, len(images)))))
    single(), per_image()  # warm-up
    times = interleaved({"single_adapter": lambda: timed(single), "mixed": lambda: timed(mixed)}, s.infer_repeats)
    loop_times = interleaved({"per_image_loop": lambda: timed(per_image), "mixed": lambda: timed(mixed)}, s.loop_repeats)
    mixed_all = times["mixed"] + loop_times["mixed"]
    return {
        "mixed_batch_ratio": ratio(times["mixed"], times["single_adapter"])[CLOCK],
        "mixed_vs_per_image_speedup": ratio(loop_times["per_image_loop"], mixed_all)[CLOCK],
        "mixed_batch_ratio_by_clock": ratio(times["mixed"], times["single_adapter"]),
        "mixed_vs_per_image_speedup_by_clock": ratio(loop_times["per_image_loop"], mixed_all),
        "single_adapter": summary(times["single_adapter"]),
        "mixed": summary(mixed_all),
        "per_image_loop": summary(loop_times["per_image_loop"]),
        "mixed_matches_per_domain": bool(agree),
        "setup": f"predict_proba on {s.infer_images} PIL images ({s.image_size}px) over {s.infer_domains} LoRA domains; "
        "timings include preprocessing, which all three sides share",
    }


# -- 3b. frozen image features across epochs --------------------------------------------------------
TEXT_ONLY_TARGETS = r".*text_model.*(q_proj|v_proj)"


def bench_text_only_epochs(s: Settings) -> dict[str, Any]:
    """The second epoch of a stage that trains only the text tower, with and without the image-feature cache."""
    from medadapt.training.objectives import Batch, ClassificationObjective

    model = fresh_model(s)
    torch.manual_seed(2)
    model.add_domain("scan", LABELS, PROMPT, adapter=lora_config(TEXT_ONLY_TARGETS, s.lora_r))
    g = torch.Generator().manual_seed(3)
    n = s.batch * 4
    pixels = torch.randn(n, 3, s.image_size, s.image_size, generator=g)
    labels = torch.randint(0, len(LABELS), (n,), generator=g)
    batches = [list(range(i, min(i + s.batch, n))) for i in range(0, n, s.batch)]
    step = medadapt_trainer_step(model, ClassificationObjective(), "scan")

    def epoch(keyed: bool) -> None:
        for rows in batches:
            keys = [("scan", i) for i in rows] if keyed else None
            step(Batch(pixels[rows], labels[rows], ["scan"] * len(rows), keys=keys))

    epoch(True)  # the first epoch fills the cache
    hits = model.scorer.image_cache_hits
    epoch(True)
    reused = model.scorer.image_cache_hits - hits == n
    times = interleaved({"cached_epoch": lambda: timed(lambda: epoch(True)), "uncached_epoch": lambda: timed(lambda: epoch(False))}, s.frozen_repeats)
    return {
        "value": ratio(times["uncached_epoch"], times["cached_epoch"])[CLOCK],
        "ratio_by_clock": ratio(times["uncached_epoch"], times["cached_epoch"]),
        "cached_epoch": summary(times["cached_epoch"]),
        "uncached_epoch": summary(times["uncached_epoch"]),
        "images_reused_in_second_epoch": bool(reused),
        "setup": f"LoRA r={s.lora_r} target_modules={TEXT_ONLY_TARGETS!r}; {n} images, batches of {s.batch}, "
        "an epoch = forward + backward + step over them",
    }


# -- 3c. predict_proba overhead over plain transformers ------------------------------------------------
def bench_predict_overhead(s: Settings) -> dict[str, Any]:
    """``predict_proba`` of one domain vs the same computation written by hand with transformers."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    model = fresh_model(s)
    torch.manual_seed(4)
    model.add_domain("scan", LABELS, PROMPT, adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (s.image_size, s.image_size, 3), dtype=np.uint8)) for _ in range(s.infer_images)]
    clip = model.base_model
    processor, tokenizer = model.backbone.image_processor, model.backbone.tokenizer
    with torch.no_grad(), model.adapters.active(["scan"]):  # the labels, encoded once by hand too
        tokens = tokenizer([PROMPT.format(label) for label in LABELS], padding=True, return_tensors="pt")
        labels = F.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1)

    def by_hand() -> Any:
        with torch.no_grad(), model.adapters.active(["scan"]):
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            feats = F.normalize(clip.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            return (clip.logit_scale.exp() * feats @ labels.t()).softmax(-1)

    def ours() -> Any:
        return model.predict_proba(images, domain="scan")

    agree = torch.allclose(ours(), by_hand(), atol=1e-5)
    times = interleaved({"predict_proba": lambda: timed(ours), "transformers": lambda: timed(by_hand)}, s.infer_repeats)
    return {
        "value": ratio(times["predict_proba"], times["transformers"])[CLOCK],
        "ratio_by_clock": ratio(times["predict_proba"], times["transformers"]),
        "predict_proba": summary(times["predict_proba"]),
        "transformers": summary(times["transformers"]),
        "same_probabilities": bool(agree),
        "setup": f"{s.infer_images} PIL images ({s.image_size}px), one LoRA domain, label embeddings cached on both sides",
    }


# -- 4. adapter scaling -----------------------------------------------------------------------------
def bench_adapter_loading(s: Settings, workdir: Path) -> dict[str, Any]:
    source = fresh_model(s)
    names = [f"stage{i:02d}" for i in range(s.n_stages)]
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        source.add_domain(name, LABELS, PROMPT, adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    save = workdir / "stages"
    source.save_pretrained(save)
    file_sizes = [os.path.getsize(save / name / "adapter_model.safetensors") for name in names]
    del source

    def load_all() -> tuple[list[Sample], list[int], list[int | None]]:
        gc.collect()
        model = fresh_model(s)
        samples, added, rss_added = [], [], []
        for name in names:
            before, rss_before = tensor_bytes(model), rss_bytes()
            samples.append(timed(lambda: model.load_adapter(save, name=name)))
            added.append(tensor_bytes(model) - before)
            rss_after = rss_bytes()
            rss_added.append(None if rss_before is None or rss_after is None else rss_after - rss_before)
        assert model.adapter_names() == names
        return samples, added, rss_added

    load_all()  # warm-up: first-call imports and allocator growth
    runs = [load_all() for _ in range(s.load_repeats)]
    by_index = [[run[0][i] for run in runs] for i in range(s.n_stages)]  # samples of the i-th load
    per_index = [med(samples) for samples in by_index]
    totals = [(sum(c for c, _ in run[0]), sum(w for _, w in run[0])) for run in runs]
    added = runs[-1][1]
    per_adapter = median(added[1:] if len(added) > 1 else added)
    rss = [v for run in runs for v in run[2][1:] if v is not None]
    return {
        "adapter_load_ratio_20_vs_1": per_index[-1] / per_index[0],
        "adapter_load_total_s_20": med(totals),
        "memory_per_adapter_ratio": per_adapter / median(file_sizes),
        "ratio_last_vs_first_by_clock": ratio(by_index[-1], by_index[0]),
        "n_stages": s.n_stages,
        "load_s_median_by_index": [round(t, 6) for t in per_index],
        "load_s_first": summary(by_index[0]),
        "load_s_last": summary(by_index[-1]),
        "load_ratio_last_vs_second": per_index[-1] / per_index[1] if s.n_stages > 1 else 1.0,
        "load_total_s": summary(totals),
        "tensor_bytes_added_by_index": added,
        "tensor_bytes_per_adapter": per_adapter,
        "safetensors_file_bytes": median(file_sizes),
        "rss_bytes_added_median": median(rss) if rss else None,
        "repeats": s.load_repeats,
        "setup": f"one save holding {s.n_stages} LoRA stages (r={s.lora_r}, q/v of both towers); each repeat builds a "
        "fresh model and calls model.load_adapter(save, name=...) for every stage in order",
    }


# -- 5. many domains in one mixed batch -------------------------------------------------------------
def many_domain_model(s: Settings, n_domains: int) -> Any:
    model = fresh_model(s)
    for i in range(n_domains):
        torch.manual_seed(1000 + i)
        model.add_domain(f"d{i:02d}", LABELS[: 2 + i % 3], f"d{i:02d} image of {{}}.", adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    return model


def bench_many_domains(s: Settings) -> dict[str, Any]:
    """``predict_proba`` of one image batch spread over K distinct LoRA domains vs one adapter.

    Also times the two halves apart (diagnostic): the image tower's mixed forward
    (``image_features_mixed``, where the gathered LoRA runs) and the label embeddings of the K
    domains (``label_features``, served from the scorer's label cache once computed), which a
    single-domain call needs for one domain only.
    """
    import numpy as np
    from PIL import Image

    top = max(s.scaling_domains)
    model = many_domain_model(s, top)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (s.image_size, s.image_size, 3), dtype=np.uint8)) for _ in range(s.scaling_images)]
    pixel_values = model.preprocess(images)
    names = [f"d{i:02d}" for i in range(top)]
    batches = {k: [names[i % k] for i in range(s.scaling_images)] for k in s.scaling_domains}

    def predict(domains: Any, gather: bool = True) -> Callable[[], Any]:
        def call() -> Any:
            model.lora.gather_mixed = gather
            try:
                return model.predict_proba(images, domain=domains)
            finally:
                model.lora.gather_mixed = True
        return call

    sides = {"single_adapter": predict(names[0])}
    sides.update({f"mixed_{k}": predict(batches[k]) for k in s.scaling_domains})
    sides[f"peft_mixed_{top}"] = predict(batches[top], gather=False)
    # exactness and paths: the gathered batch equals per-domain calls and peft's own path
    gathered = sides[f"mixed_{top}"]()
    path = model.lora.last_mixed_path
    peft_out = sides[f"peft_mixed_{top}"]()
    peft_path = model.lora.last_mixed_path
    checked = range(0, s.scaling_images, max(1, s.scaling_images // 8))
    agree = all(torch.allclose(gathered[i], model.predict_proba(images[i], domain=batches[top][i])[0], atol=1e-5) for i in checked)
    agree_peft = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gathered, peft_out))
    for fn in sides.values():  # warm-up
        fn()
    times = interleaved({n: (lambda fn=fn: timed(fn)) for n, fn in sides.items()}, s.scaling_repeats)

    # diagnostic halves at the largest K
    served = batches[top]
    pairs = sorted({(d, d) for d in served})
    hits_before = getattr(model.scorer, "label_cache_hits", 0)
    halves = interleaved({
        "image_single": lambda: timed(lambda: model.scorer.image_features(pixel_values, names[0])),
        "image_mixed": lambda: timed(lambda: model.scorer.image_features_mixed(pixel_values, served)),
        "labels_one_domain": lambda: timed(lambda: model.scorer.label_features(model.domains[names[0]], names[0])),
        "labels_all_domains": lambda: timed(lambda: [model.scorer.label_features(model.domains[d], a) for d, a in pairs]),
    }, s.scaling_repeats)
    lookups = s.scaling_repeats * (len(pairs) + 1)
    single = times["single_adapter"]
    out: dict[str, Any] = {
        "label_cache_hit_share": (getattr(model.scorer, "label_cache_hits", 0) - hits_before) / lookups,
        "label_lookup_ms": med(halves["labels_all_domains"]) / len(pairs) * 1e3,
        **{f"mixed_batch_ratio_{k}": ratio(times[f"mixed_{k}"], single)[CLOCK] for k in s.scaling_domains},
        f"peft_mixed_ratio_{top}": ratio(times[f"peft_mixed_{top}"], single)[CLOCK],
        "ratio_by_clock": {n: ratio(t, single) for n, t in times.items() if n != "single_adapter"},
        "timings": {n: summary(t) for n, t in times.items()},
        "image_tower_mixed_ratio": ratio(halves["image_mixed"], halves["image_single"])[CLOCK],
        "label_prompts_ratio": ratio(halves["labels_all_domains"], halves["labels_one_domain"])[CLOCK],
        "halves": {n: summary(t) for n, t in halves.items()},
        "label_prompts_encoded": {"single_adapter": len(LABELS[:2]), f"mixed_{top}": sum(len(model.domains[d].labels) for d, _ in pairs)},
        "mixed_path": path,
        "peft_side_path": peft_path,
        "gather_cache_bytes": model.lora.gather.nbytes(),
        "adapter_tensor_bytes": sum(p.numel() * p.element_size() for n in names for p in model.adapter_parameters(n)),
        "mixed_matches_per_domain": bool(agree),
        "gathered_matches_peft_path": bool(agree_peft),
        "distinct_domains": {k: len(set(batches[k])) for k in s.scaling_domains},
        "setup": f"predict_proba on {s.scaling_images} PIL images ({s.image_size}px), {top} LoRA domains (r={s.lora_r}, q/v of "
        "both towers, 2-4 labels each); K distinct domains per batch vs all images through one domain; peft side: "
        "model.lora.gather_mixed=False (peft's adapter_names sub-batches)",
    }
    return out


# -- 6. a hundred adapters ----------------------------------------------------------------------------
def save_many(s: Settings, n: int, folder: Path, hidden: int | None = None) -> list[str]:
    from dataclasses import replace

    model = fresh_model(replace(s, hidden=hidden or s.hidden))
    names = [f"many{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        torch.manual_seed(5000 + i)
        model.add_domain(name, LABELS[:2], PROMPT, adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    model.save_pretrained(folder)
    return names


def memory_probe(save: str, hidden: int, image_size: int, use_rss: bool = True) -> dict[str, Any]:
    """In a fresh process: RSS growth while loading every stage of ``save`` after the first, and the
    bytes of the tensors those stages hold (the first load wraps the base: left out of both).

    ``use_rss=False`` (smoke runs, in the benchmark's own process where RSS growth means nothing)
    counts the model's tensor bytes instead."""
    from safetensors.torch import load_file

    from medadapt import ContinualVLM
    from medadapt.hub.manifest import read_manifest
    from medadapt.tiny import tiny_backbone

    names = read_manifest(save)["stage_order"]
    model = ContinualVLM(tiny_backbone("clip", seed=0, image_size=image_size, hidden=hidden))
    model.load_adapter(save, name=names[0])
    measure = rss_bytes if use_rss else (lambda: tensor_bytes(model))
    gc.collect()
    before = measure()
    for name in names[1:]:
        model.load_adapter(save, name=name)
    gc.collect()
    after = measure()
    tensors = sum(t.numel() * t.element_size() for n in names[1:] for t in load_file(str(Path(save) / n / "adapter_model.safetensors")).values())
    modules = sum(1 for layer in model.lora._layers().layers.values() for _ in layer.lora_A) * 3 // len(names)
    adapters = len(names) - 1
    return {"rss_added_bytes": after - before, "tensor_bytes": tensors, "adapters": adapters, "hidden": hidden,
            "measured": "rss" if use_rss else "tensor bytes (smoke)",
            "ratio": (after - before) / tensors, "modules_per_adapter": modules,
            "tensor_bytes_per_adapter": tensors / adapters, "overhead_bytes_per_adapter": (after - before - tensors) / adapters}


def run_memory_probe(save: Path, hidden: int, image_size: int) -> dict[str, Any]:
    import subprocess

    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); import speed; "
            "print(json.dumps(speed.memory_probe(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))")
    here = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-c", code, str(here.parent), str(here), str(save), str(hidden), str(image_size)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_many_adapters(s: Settings, workdir: Path) -> dict[str, Any]:
    """``n_many`` sequential ``load_adapter`` calls into a fresh model; memory in a fresh process."""
    save = workdir / "many"
    names = save_many(s, s.n_many, save)
    window = max(1, min(5, s.n_many // 2))

    def load_all() -> list[Sample]:
        gc.collect()
        model = fresh_model(s)
        samples = [timed(lambda name=name: model.load_adapter(save, name=name)) for name in names]
        assert model.adapter_names() == names
        return samples

    load_all()  # warm-up
    runs = [load_all() for _ in range(s.many_repeats)]
    first = [sample for run in runs for sample in run[:window]]
    last = [sample for run in runs for sample in run[-window:]]
    per_index = [med([run[i] for run in runs]) for i in range(s.n_many)]
    totals = [(sum(c for c, _ in run), sum(w for _, w in run)) for run in runs]
    probe = run_memory_probe if s.memory_fresh_process else lambda *args: memory_probe(str(args[0]), *args[1:], use_rss=False)
    memory = probe(save, s.hidden, s.image_size)
    result: dict[str, Any] = {
        "adapter_load_ratio_100_vs_1": med(last) / med(first),
        "adapter_load_total_s_100": med(totals),
        "memory_100_adapters_ratio": memory["ratio"],
        "ratio_by_clock": ratio(last, first),
        "n_loads": s.n_many,
        "window": window,
        "load_s_first": summary(first),
        "load_s_last": summary(last),
        "load_s_median_by_index": [round(t, 6) for t in per_index],
        "load_total_s": summary(totals),
        "memory": memory,
        "setup": f"one save holding {s.n_many} LoRA stages (r={s.lora_r}, q/v of both towers); a fresh model loads them in "
        f"order with model.load_adapter(save, name=...); ratio = median of the last {window} loads / median of the first "
        f"{window} (first includes peft wrapping the base). Memory: RSS growth over loads 2..{s.n_many} in a fresh "
        "process / the bytes of those stages' tensors",
    }
    if s.memory_hidden_check:
        big = workdir / "many_big"
        save_many(s, s.n_many, big, hidden=s.memory_hidden_check)
        result["memory_at_hidden"] = {str(s.memory_hidden_check): run_memory_probe(big, s.memory_hidden_check, s.image_size)}
    return result


# -- main -------------------------------------------------------------------------------------------
def miss_causes(measurements: dict[str, Any]) -> dict[str, str]:
    """The measured reason behind each target that can miss, written into ``targets`` when it does."""
    causes: dict[str, str] = {}
    mixed = measurements.get("many_domain_mixed_batch")
    if mixed:
        prompts = mixed["label_prompts_encoded"]
        causes["mixed_batch_ratio_64"] = (
            f"the image tower with gathered LoRA takes {mixed['image_tower_mixed_ratio']:.2f}x the one-adapter time and "
            f"the label embeddings of the 64 domains ({max(prompts.values())} prompts through 64 adapters, vs "
            f"{min(prompts.values())}) {mixed['label_prompts_ratio']:.1f}x one domain's: {mixed['label_lookup_ms']:.2f} ms per "
            f"(domain, adapter) label lookup, {mixed['label_cache_hit_share']:.0%} of them label-cache hits, so the time is "
            "the lookup itself (see halves)"
        )
    many = measurements.get("many_adapters")
    if many:
        mem = many["memory"]
        text = (
            f"peft keeps {mem['modules_per_adapter']} nn.Module objects per adapter (lora_A, lora_B and a dropout per "
            f"target layer): {mem['overhead_bytes_per_adapter'] / 1024:.0f} KiB of resident memory per adapter beyond its "
            f"{mem['tensor_bytes_per_adapter'] / 1024:.0f} KiB of tensors at hidden {mem['hidden']}, a fixed cost per "
            "module that larger layers dilute"
        )
        for hidden, probe in (many.get("memory_at_hidden") or {}).items():
            text += f"; at hidden {hidden} the same 100 stages give {probe['ratio']:.2f}"
        causes["memory_100_adapters_ratio"] = text
        causes["adapter_load_ratio_100_vs_1"] = (
            f"last {many['window']} loads {many['load_s_last']['median_s'] * 1e3:.1f} ms vs first "
            f"{many['load_s_first']['median_s'] * 1e3:.1f} ms (see load_s_median_by_index)"
        )
    return causes


def check(key: str, value: float) -> dict[str, Any]:
    target = TARGETS[key]
    if target is None:
        return {"value": value, "target": None, "pass": None}
    op, threshold = target
    ok = value <= threshold if op == "<=" else value > threshold
    return {"value": value, "target": f"{op} {threshold}", "pass": bool(ok)}


def atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(mode: str, out: Path, threads: int = 1, clock: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    global CLOCK
    from medadapt.tiny import _quiet_transformers

    _quiet_transformers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*was renamed", category=UserWarning)
    if threads > 0:
        torch.set_num_threads(threads)
    CLOCK = clock
    s = MODES[mode]
    torch.manual_seed(0)
    started = time.perf_counter()
    measurements: dict[str, Any] = {}
    stamps: dict[str, float] = {}

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        result = fn()
        stamps[name] = round(time.perf_counter() - t0, 3)
        log(f"[speed] {name}: {stamps[name]:.1f}s")
        measurements[name] = result
        return result

    training = section("training_overhead", lambda: bench_training(s))
    frozen = section("frozen_tower_reuse", lambda: bench_frozen_tower(s))
    mixed = section("mixed_domain_inference", lambda: bench_mixed(s))
    with tempfile.TemporaryDirectory(prefix="medadapt-speed-") as tmp:
        loading = section("adapter_scaling", lambda: bench_adapter_loading(s, Path(tmp)))
    many_domains = section("many_domain_mixed_batch", lambda: bench_many_domains(s))
    with tempfile.TemporaryDirectory(prefix="medadapt-speed-") as tmp:
        many = section("many_adapters", lambda: bench_many_adapters(s, Path(tmp)))
    text_only = section("text_only_epochs", lambda: bench_text_only_epochs(s))
    overhead = section("predict_overhead", lambda: bench_predict_overhead(s))

    values = {
        "train_step_ratio": training["value"],
        "frozen_tower_speedup": frozen["value"],
        "mixed_batch_ratio": mixed["mixed_batch_ratio"],
        "mixed_vs_per_image_speedup": mixed["mixed_vs_per_image_speedup"],
        "adapter_load_ratio_20_vs_1": loading["adapter_load_ratio_20_vs_1"],
        "adapter_load_total_s_20": loading["adapter_load_total_s_20"],
        "memory_per_adapter_ratio": loading["memory_per_adapter_ratio"],
        **{k: many_domains[k] for k in SECTION_KEYS["many_domain_mixed_batch"]},
        **{k: many[k] for k in SECTION_KEYS["many_adapters"]},
        "text_only_epoch_speedup": text_only["value"],
        "predict_overhead_ratio": overhead["value"],
    }
    targets = {k: check(k, v) for k, v in values.items()}
    for key, cause in miss_causes(measurements).items():
        if targets[key]["pass"] is False:
            targets[key]["cause"] = cause
    for section_name, keys in SECTION_KEYS.items():
        measurements[section_name]["targets"] = {k: targets[k] for k in keys}
    result = results_record(values, targets, mode, s, clock, measurements, stamps, started)
    atomic_write_json(out, result)
    return result


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer repeats: same keys, < 60 s, noisier numbers")
    group.add_argument("--smoke", action="store_true", help="minimal sizes and repeats, for the test-suite only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stable on shared machines; 0 keeps torch's default)")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu",
                        help="clock of the headline numbers: process CPU time (default; robust to other load "
                        "when --threads 1) or wall time. Both are recorded.")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    result = run(mode, args.out, threads=args.threads, clock=args.clock, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    width = max(len(k) for k in TARGETS)
    for key, entry in result["targets"].items():
        flag = "n/a " if entry["pass"] is None else ("PASS" if entry["pass"] else "MISS")
        print(f"{key:<{width}}  {entry['value']:8.4f}  {entry['target'] or '':>7}  {flag}")
    print(f"wrote {args.out} ({mode}, {result['total_seconds']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
