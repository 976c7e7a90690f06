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
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import harness  # beside this script; puts this checkout's medadapt first on sys.path
import torch
import torch.nn.functional as F
from harness import CLOCKS, Sample, interleaved, medadapt_trainer_step, median, race_steps, ratio, results_record, rss_bytes, tensor_bytes, timed, write_results

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
    n_many: int = 100  # sequential loads for adapter_load_ratio_100_vs_2 / memory_100_adapters_ratio
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
    "adapter_load_ratio_20_vs_2": ("<=", 1.2),
    "adapter_load_total_s_20": None,
    "memory_per_adapter_ratio": ("<=", 1.5),
    "mixed_batch_ratio_4": None,
    "mixed_batch_ratio_16": None,
    "mixed_batch_ratio_64": ("<=", 1.3),
    "peft_mixed_ratio_64": None,
    "adapter_load_ratio_100_vs_2": ("<=", 1.2),
    "adapter_load_total_s_100": None,
    "memory_100_adapters_ratio": ("<=", 1.2),
    "text_only_epoch_speedup": (">=", 3.0),
    "predict_overhead_ratio": ("<=", 1.10),
    "cnn_train_step_ratio": ("<=", 1.10),
}


SECTION_KEYS = {
    "training_overhead": ["train_step_ratio"],
    "frozen_tower_reuse": ["frozen_tower_speedup"],
    "mixed_domain_inference": ["mixed_batch_ratio", "mixed_vs_per_image_speedup"],
    "adapter_scaling": ["adapter_load_ratio_20_vs_2", "adapter_load_total_s_20", "memory_per_adapter_ratio"],
    "many_domain_mixed_batch": ["mixed_batch_ratio_4", "mixed_batch_ratio_16", "mixed_batch_ratio_64", "peft_mixed_ratio_64"],
    "many_adapters": ["adapter_load_ratio_100_vs_2", "adapter_load_total_s_100", "memory_100_adapters_ratio"],
    "text_only_epochs": ["text_only_epoch_speedup"],
    "predict_overhead": ["predict_overhead_ratio"],
    "cnn_training_overhead": ["cnn_train_step_ratio"],
}

# key -> (section, flags of that section's measurements that must all be true for the target to pass):
# a timing of a path that computes the wrong thing is not a pass
FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train_step_ratio": ("training_overhead", ("same_losses",)),
    "frozen_tower_speedup": ("frozen_tower_reuse", ("cache_used", "text_tower_frozen")),
    "mixed_batch_ratio": ("mixed_domain_inference", ("mixed_matches_per_domain",)),
    "mixed_vs_per_image_speedup": ("mixed_domain_inference", ("mixed_matches_per_domain",)),
    "adapter_load_ratio_20_vs_2": ("adapter_scaling", ("all_stages_loaded", "loaded_weights_match_source")),
    "memory_per_adapter_ratio": ("adapter_scaling", ("all_stages_loaded", "memory_measured_rss")),
    "mixed_batch_ratio_64": ("many_domain_mixed_batch", ("mixed_matches_per_domain", "gathered_matches_peft_path")),
    "adapter_load_ratio_100_vs_2": ("many_adapters", ("all_stages_loaded",)),
    "memory_100_adapters_ratio": ("many_adapters", ("all_stages_loaded", "memory_measured_rss")),
    "text_only_epoch_speedup": ("text_only_epochs", ("images_reused_in_second_epoch",)),
    "predict_overhead_ratio": ("predict_overhead", ("same_probabilities",)),
    "cnn_train_step_ratio": ("cnn_training_overhead", ("same_losses", "same_trainable_parameters")),
}
#: sections ``--only`` can run by themselves (their keys are merged into an existing results file)
ONLY = {"cnn_train_step": "cnn_training_overhead"}


def flags_of(key: str, measurements: dict[str, Any]) -> dict[str, bool]:
    """The correctness flags that gate ``key``'s target, read from the measurements."""
    section, names = FLAGS.get(key, ("", ()))
    return {name: bool(measurements[section][name]) for name in names}


# -- helpers (timing, memory, targets and the results file live in harness.py) ---------------------
CLOCK = "cpu"  # which clock the headline numbers use; set by run()


def pick(samples: list[Sample], clock: str | None = None) -> list[float]:
    return harness.pick(samples, clock or CLOCK)


def med(samples: list[Sample], clock: str | None = None) -> float:
    """Median seconds of ``samples`` on ``clock`` (default: the run's clock)."""
    return harness.med(samples, clock or CLOCK)


def summary(samples: list[Sample]) -> dict[str, Any]:
    return harness.summary(samples, CLOCK)


def lora_config(targets: Any, r: int) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, bias="none")


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

def plain_contrastive_step(model: Any, tokens: Any, optimizer: Any) -> Any:
    """One plain peft training step of a dual encoder on a batch: image and label-prompt features,
    CLIP logits, cross-entropy, backward, AdamW (the baseline medadapt's step is raced against)."""
    input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]

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

def peft_baseline_step(s: Settings, lr: float = 1e-3) -> Callable[[Any], float]:
    """A hand-written peft + torch loop doing the same forward/backward on an identical model."""
    from peft import get_peft_model

    from medadapt.tiny import tiny_backbone

    backbone = tiny_backbone("clip", seed=0, image_size=s.image_size, hidden=s.hidden)
    torch.manual_seed(1)
    model = get_peft_model(backbone.model, lora_config(list(LORA_TARGETS), s.lora_r))
    texts = [PROMPT.format(label) for label in LABELS]
    tokens = backbone.tokenizer(texts, padding=True, truncation=True, max_length=backbone.text_max_length(), return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    return plain_contrastive_step(model, tokens, optimizer)


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


# -- 1b. training overhead on a real CNN tower -----------------------------------------------------
CNN_LABELS = ["normal", "pneumonia"]
CNN_PROMPT = "a pediatric chest x-ray showing {}."
CNN_LORA_R = 16  # the real-tower paradigm benchmark's shared adapter (r 16, alpha 32, default CNN targets)


def real_tower_module() -> Any:
    """``benchmarks/real_tower.py`` (beside this script)."""
    import real_tower

    return real_tower


def cnn_batch(s: Settings, image_size: int) -> Any:
    from medadapt.training.objectives import Batch

    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(s.batch, 3, image_size, image_size, generator=g)
    labels = torch.randint(0, len(CNN_LABELS), (s.batch,), generator=g)
    return Batch(pixels, labels, ["scan"] * s.batch)


def plain_cnn_step(targets: list[str], lr: float = 1e-3) -> tuple[Callable[[Any], float], int]:
    """A plain peft + torch loop on its own copy of the real-tower dual encoder: the same LoRA
    (targets, rank, init seed) on the same weights, the frozen base in eval mode as medadapt keeps
    it, image and label-prompt features through the model's own ``get_image_features`` /
    ``get_text_features``, scaled cosine logits, cross-entropy, AdamW. Returns the step and the
    number of trainable parameters."""
    from peft import get_peft_model

    backbone = real_tower_module().real_tower_backbone()
    torch.manual_seed(1)
    model = get_peft_model(backbone.model, lora_config(list(targets), CNN_LORA_R))
    texts = [CNN_PROMPT.format(label) for label in CNN_LABELS]
    tokens = backbone.tokenizer(texts, padding=True, truncation=True, max_length=backbone.text_max_length(), return_tensors="pt")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.eval()  # frozen base: no BatchNorm statistics updates, no dropout (LoRA dropout is 0)
    return plain_contrastive_step(model, tokens, optimizer), sum(p.numel() for p in params)


def profile_steps(steps: dict[str, Callable[[Any], float]], batch: Any, top: int = 8) -> dict[str, Any]:
    """Self CPU time per operator of one step of each side (torch.profiler), the largest first."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {}
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batch)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        out[name] = {"total_self_ms": sum(e.self_cpu_time_total for e in rows) / 1e3,
                     "top_ops_self_ms": {e.key: round(e.self_cpu_time_total / 1e3, 2) for e in rows[:top]},
                     "op_calls": sum(e.count for e in rows)}
    return out


def bench_cnn_training(s: Settings) -> dict[str, Any]:
    """medadapt's train step (the recipe's step through the trainer's objective) vs a plain loop
    training the same LoRA parameters on the real pretrained CNN tower (``benchmarks/real_tower.py``)."""
    from medadapt import ContinualVLM
    from medadapt.training.objectives import ClassificationObjective

    rt = real_tower_module()
    if not rt.available():
        return {"skipped": rt.missing_reason()}
    backbone = rt.real_tower_backbone()
    targets = list(backbone.family.default_lora_targets(backbone.model))
    image_size = rt.IMAGE_SIZE if s.image_size >= rt.IMAGE_SIZE else 32  # smoke: smaller images
    batch = cnn_batch(s, image_size)
    model = ContinualVLM(backbone)
    torch.manual_seed(1)
    model.add_domain("scan", CNN_LABELS, CNN_PROMPT, adapter=lora_config(targets, CNN_LORA_R))
    ours = medadapt_trainer_step(model, ClassificationObjective(), "scan")
    ours_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base, base_params = plain_cnn_step(targets)
    losses, times = race_steps(ours, base, batch, s)
    ratios = ratio(times["medadapt"], times["peft"])
    return {
        "value": ratios[CLOCK],
        "ratio_by_clock": ratios,
        "paired_ratio_median": median([a / b for a, b in zip(pick(times["medadapt"]), pick(times["peft"]))]),
        "medadapt_step": summary(times["medadapt"]),
        "plain_step": summary(times["peft"]),
        "steps_per_repeat": s.train_steps,
        "first_losses": losses,
        "same_losses": all(abs(a - b) < 1e-4 for a, b in zip(losses["medadapt"], losses["peft"])),
        "trainable_parameters": {"medadapt": ours_params, "plain": base_params},
        "same_trainable_parameters": ours_params == base_params,
        "lora_targets": targets,
        "text_tower_trainable": bool(model.text_tower_trainable("scan")),
        "profile": profile_steps({"medadapt": ours, "plain": base}, batch),
        "setup": f"{rt.NAME} (pretrained) + random 2-layer BERT in a VisionTextDualEncoderModel, image {image_size}px, batch "
        f"{s.batch}, {len(CNN_LABELS)} labels, LoRA r={CNN_LORA_R} on the family's default CNN targets (text q/v, the image "
        "tower's last stage, visual_projection), AdamW; plain side: peft + get_image_features/get_text_features + cross-entropy",
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
        "text_tower_frozen": not trainable_text,  # the cache may only serve a frozen text tower
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
    """20 stages loaded in order into fresh models: the last load against the second (the first also
    wraps the base with peft, so it is not a like-for-like baseline), and the resident memory the
    loads add, measured in a fresh process."""
    source = fresh_model(s)
    names = [f"stage{i:02d}" for i in range(s.n_stages)]
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        source.add_domain(name, LABELS, PROMPT, adapter=lora_config(list(LORA_TARGETS), s.lora_r))
    save = workdir / "stages"
    source.save_pretrained(save)
    file_sizes = [os.path.getsize(save / name / "adapter_model.safetensors") for name in names]
    expected = {name: source.adapter_state_dict(name) for name in (names[1], names[-1])}
    del source
    correct = {"all_stages_loaded": True, "loaded_weights_match_source": True}

    def load_all() -> tuple[list[Sample], list[int]]:
        gc.collect()
        model = fresh_model(s)
        samples, added = [], []
        for name in names:
            before = tensor_bytes(model)
            samples.append(timed(lambda: model.load_adapter(save, name=name)))
            added.append(tensor_bytes(model) - before)
        correct["all_stages_loaded"] &= model.adapter_names() == names
        for name, weights in expected.items():
            got = model.adapter_state_dict(name)
            correct["loaded_weights_match_source"] &= got.keys() == weights.keys() and all(torch.equal(got[k], v) for k, v in weights.items())
        return samples, added

    load_all()  # warm-up: first-call imports and allocator growth
    runs = [load_all() for _ in range(s.load_repeats)]
    by_index = [[run[0][i] for run in runs] for i in range(s.n_stages)]  # samples of the i-th load
    per_index = [med(samples) for samples in by_index]
    totals = [(sum(c for c, _ in run[0]), sum(w for _, w in run[0])) for run in runs]
    added = runs[-1][1]
    per_adapter = median(added[1:] if len(added) > 1 else added)
    second = 1 if s.n_stages > 1 else 0
    probe = run_memory_probe if s.memory_fresh_process else lambda *args: memory_probe(str(args[0]), *args[1:], use_rss=False)
    memory = probe(save, s.hidden, s.image_size)
    return {
        "adapter_load_ratio_20_vs_2": per_index[-1] / per_index[second],
        "adapter_load_total_s_20": med(totals),
        "memory_per_adapter_ratio": memory["ratio"],
        "ratio_last_vs_second_by_clock": ratio(by_index[-1], by_index[second]),
        "load_ratio_last_vs_first": per_index[-1] / per_index[0],
        "n_stages": s.n_stages,
        "load_s_median_by_index": [round(t, 6) for t in per_index],
        "load_s_first": summary(by_index[0]),
        "load_s_second": summary(by_index[second]),
        "load_s_last": summary(by_index[-1]),
        "load_total_s": summary(totals),
        "memory": memory,
        "memory_measured_rss": memory["measured"] == "rss",
        "tensor_bytes_added_by_index": added,
        "tensor_bytes_per_adapter": per_adapter,
        "safetensors_file_bytes": median(file_sizes),
        **correct,
        "repeats": s.load_repeats,
        "setup": f"one save holding {s.n_stages} LoRA stages (r={s.lora_r}, q/v of both towers); each repeat builds a "
        "fresh model and calls model.load_adapter(save, name=...) for every stage in order; ratio = last load / second "
        f"load. Memory: RSS growth over loads 2..{s.n_stages} in a fresh process / the bytes of those stages' tensors",
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
    from medadapt.saves.manifest import read_manifest
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
    """:func:`memory_probe` in a fresh Python process (this script with ``--memory-probe``)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(save), str(hidden), str(image_size)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_many_adapters(s: Settings, workdir: Path) -> dict[str, Any]:
    """``n_many`` sequential ``load_adapter`` calls into a fresh model; memory in a fresh process."""
    save = workdir / "many"
    names = save_many(s, s.n_many, save)
    window = max(1, min(5, s.n_many // 2))

    loaded = {"all_stages_loaded": True}

    def load_all() -> list[Sample]:
        gc.collect()
        model = fresh_model(s)
        samples = [timed(lambda name=name: model.load_adapter(save, name=name)) for name in names]
        loaded["all_stages_loaded"] &= model.adapter_names() == names
        return samples

    load_all()  # warm-up
    runs = [load_all() for _ in range(s.many_repeats)]
    # the first load also wraps the base with peft: the baseline is loads 2..window+1
    first = [sample for run in runs for sample in run[1 : 1 + window]]
    last = [sample for run in runs for sample in run[-window:]]
    per_index = [med([run[i] for run in runs]) for i in range(s.n_many)]
    totals = [(sum(c for c, _ in run), sum(w for _, w in run)) for run in runs]
    probe = run_memory_probe if s.memory_fresh_process else lambda *args: memory_probe(str(args[0]), *args[1:], use_rss=False)
    memory = probe(save, s.hidden, s.image_size)
    result: dict[str, Any] = {
        "adapter_load_ratio_100_vs_2": med(last) / med(first),
        "adapter_load_total_s_100": med(totals),
        "memory_100_adapters_ratio": memory["ratio"],
        "memory_measured_rss": memory["measured"] == "rss",
        **loaded,
        "ratio_by_clock": ratio(last, first),
        "n_loads": s.n_many,
        "window": window,
        "load_s_first": summary(first),
        "load_s_last": summary(last),
        "load_s_median_by_index": [round(t, 6) for t in per_index],
        "load_total_s": summary(totals),
        "memory": memory,
        "setup": f"one save holding {s.n_many} LoRA stages (r={s.lora_r}, q/v of both towers); a fresh model loads them in "
        f"order with model.load_adapter(save, name=...); ratio = median of the last {window} loads / median of loads 2.."
        f"{window + 1} (the first load, which also wraps the base with peft, is left out). Memory: RSS growth over loads 2..{s.n_many} in a fresh "
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
        causes["adapter_load_ratio_100_vs_2"] = (
            f"last {many['window']} loads {many['load_s_last']['median_s'] * 1e3:.1f} ms vs loads 2..{many['window'] + 1} "
            f"{many['load_s_first']['median_s'] * 1e3:.1f} ms (see load_s_median_by_index)"
        )
    loading = measurements.get("adapter_scaling")
    if loading:
        mem = loading["memory"]
        causes["adapter_load_ratio_20_vs_2"] = (
            f"last load {loading['load_s_last']['median_s'] * 1e3:.1f} ms vs second {loading['load_s_second']['median_s'] * 1e3:.1f} ms "
            "(see load_s_median_by_index)"
        )
        causes["memory_per_adapter_ratio"] = (
            f"each adapter adds {mem['rss_added_bytes'] / max(mem['adapters'], 1) / 1024:.0f} KiB of resident memory for "
            f"{mem['tensor_bytes_per_adapter'] / 1024:.0f} KiB of tensors ({mem['modules_per_adapter']} nn.Module objects per "
            f"adapter at hidden {mem['hidden']})"
        )
    return causes


def cnn_values(cnn: dict[str, Any]) -> dict[str, float]:
    """The CNN section's headline value (none when it was skipped)."""
    return {} if cnn.get("skipped") else {"cnn_train_step_ratio": cnn["value"]}


def cnn_targets(cnn: dict[str, Any], measurements: dict[str, Any]) -> dict[str, Any]:
    """``cnn_train_step_ratio`` judged (or marked skipped, with the reason)."""
    key = "cnn_train_step_ratio"
    if cnn.get("skipped"):
        op, threshold = TARGETS[key]
        return {key: {"value": None, "target": f"{op} {threshold}", "pass": None, "skipped": cnn["skipped"]}}
    return {key: harness.check(TARGETS[key], cnn["value"], flags_of(key, measurements), cnn_miss_cause(cnn))}


def cnn_miss_cause(cnn: dict[str, Any]) -> str:
    """The profile of one step of each side, as the reason a miss has."""
    prof = cnn["profile"]
    ours, plain = prof["medadapt"], prof["plain"]
    extra = {k: v - plain["top_ops_self_ms"].get(k, 0.0) for k, v in ours["top_ops_self_ms"].items()}
    worst = sorted(extra.items(), key=lambda kv: kv[1], reverse=True)[:3]
    return (f"one profiled step: medadapt {ours['total_self_ms']:.0f} ms self CPU in {ours['op_calls']} op calls vs plain "
            f"{plain['total_self_ms']:.0f} ms in {plain['op_calls']}; largest extra self time: "
            + ", ".join(f"{k} +{v:.1f} ms" for k, v in worst))


def _prepare(threads: int, clock: str) -> None:
    """Quiet transformers' load reports and known warnings, set the torch threads and the clock, seed 0."""
    global CLOCK
    from medadapt.tiny import quiet_transformers

    quiet_transformers()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*was renamed", category=UserWarning)
    if threads > 0:
        torch.set_num_threads(threads)
    CLOCK = clock
    torch.manual_seed(0)


def run_only(name: str, mode: str, out: Path, threads: int = 1, clock: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one section (see :data:`ONLY`) and merge its keys into ``out`` (other values kept; a new
    file when ``out`` does not exist)."""
    _prepare(threads, clock)
    s = MODES[mode]
    started = time.perf_counter()
    section = ONLY[name]
    cnn = bench_cnn_training(s)
    seconds = round(time.perf_counter() - started, 3)
    log(f"[speed] {section}: {seconds:.1f}s")
    measurements = {section: cnn}
    values = cnn_values(cnn)
    targets = cnn_targets(cnn, measurements)
    cnn["targets"] = targets
    cnn["run"] = {"mode": mode, "clock": clock, "torch_threads": torch.get_num_threads(), "seconds": seconds,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": harness.machine_info(),
                  "load_average": [round(x, 2) for x in os.getloadavg()]}
    if out.is_file():
        old = json.loads(out.read_text(encoding="utf-8"))
        record: dict[str, Any] = {}
        for key, value in old.items():  # the file's order kept; this section's values go just before "targets"
            if key in SECTION_KEYS[section]:
                continue
            if key == "targets":
                record.update({k: round(v, 4) for k, v in values.items()})
                value = {k: v for k, v in value.items() if k not in SECTION_KEYS[section]} | targets
            record[key] = value
        record["all_pass"] = all(t["pass"] is not False for t in record["targets"].values())
        record.setdefault("measurements", {})[section] = cnn
        record.setdefault("section_seconds", {})[section] = seconds
    else:
        record = results_record(values, targets, mode, s, clock, measurements, {section: seconds}, started)
    write_results(out, record)
    return {**record, "targets": targets}


def run(mode: str, out: Path, threads: int = 1, clock: str = "cpu", log: Callable[[str], None] = print) -> dict[str, Any]:
    _prepare(threads, clock)
    s = MODES[mode]
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
    cnn = section("cnn_training_overhead", lambda: bench_cnn_training(s))

    values = {
        "train_step_ratio": training["value"],
        "frozen_tower_speedup": frozen["value"],
        "mixed_batch_ratio": mixed["mixed_batch_ratio"],
        "mixed_vs_per_image_speedup": mixed["mixed_vs_per_image_speedup"],
        "adapter_load_ratio_20_vs_2": loading["adapter_load_ratio_20_vs_2"],
        "adapter_load_total_s_20": loading["adapter_load_total_s_20"],
        "memory_per_adapter_ratio": loading["memory_per_adapter_ratio"],
        **{k: many_domains[k] for k in SECTION_KEYS["many_domain_mixed_batch"]},
        **{k: many[k] for k in SECTION_KEYS["many_adapters"]},
        "text_only_epoch_speedup": text_only["value"],
        "predict_overhead_ratio": overhead["value"],
    }
    causes = miss_causes(measurements)
    targets = {k: harness.check(TARGETS[k], v, flags_of(k, measurements), causes.get(k)) for k, v in values.items()}
    values.update(cnn_values(cnn))
    targets.update(cnn_targets(cnn, measurements))
    for section_name, keys in SECTION_KEYS.items():
        measurements[section_name]["targets"] = {k: targets[k] for k in keys}
    result = results_record(values, targets, mode, s, clock, measurements, stamps, started)
    write_results(out, result)
    return result


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
    parser.add_argument("--only", choices=sorted(ONLY),
                        help="run one section only and merge its keys into --out, keeping the file's other values "
                        "(cnn_train_step: cnn_train_step_ratio on the real EfficientNet-Lite0 tower)")
    parser.add_argument("--memory-probe", nargs=3, metavar=("SAVE", "HIDDEN", "IMAGE_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:  # internal: run_memory_probe's fresh process
        save, hidden, image_size = args.memory_probe
        print(json.dumps(memory_probe(save, int(hidden), int(image_size))))
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    started = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.only:
        result = run_only(args.only, mode, args.out, threads=args.threads, clock=args.clock, log=log)
    else:
        result = run(mode, args.out, threads=args.threads, clock=args.clock, log=log)
    width = max(len(k) for k in TARGETS)
    for key, entry in result["targets"].items():
        if entry.get("skipped"):
            print(f"{key:<{width}}  skipped: {entry['skipped']}")
            continue
        flag = "n/a " if entry["pass"] is None else ("PASS" if entry["pass"] else "MISS")
        print(f"{key:<{width}}  {entry['value']:8.4f}  {entry['target'] or '':>7}  {flag}")
    print(f"wrote {args.out} ({mode}, {time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
