#!/usr/bin/env python
"""GPU benchmark of medadapt on real-size generative bases, built from config with random weights (no
downloads): Gemma 3 at MedGemma-4B's configuration and LLaVA-1.5 at 7B's. Every ratio is measured side by
side in the same run:

- ``trl_time_ratio`` / ``trl_memory_ratio``: medadapt's train step (the trainer's step: bf16 autocast,
  AdamW on float32 LoRA weights) against TRL's ``SFTTrainer`` with the same peft LoRA, base, batch and
  token ids (tokens/s and peak CUDA memory); targets <= 1.10 and <= 1.05.
- ``trl_epoch2_throughput_ratio`` / ``trl_epoch1_time_ratio`` (issue 23): medadapt's LM-only step with the
  image-token cache, once every image's tokens are kept (epoch 2: TRL's step time over ours, target >= 1.3)
  and while they are being made (epoch 1: our step time over TRL's, target <= 1.10), same base, LoRA,
  batch and tokens as the TRL row.
- ``grad_ckpt_memory_ratio``: medadapt's peak memory with ``train.gradient_checkpointing`` over without
  (Gemma 3 4B, batch 8); ``gemma3_4b_bf16_gc_batch8_peak_gb`` must fit an 80 GB card.
- ``qlora_memory_ratio`` / ``qlora_time_ratio``: LLaVA-1.5-7B in 4-bit NF4 (bitsandbytes, prepared with
  peft's ``prepare_model_for_kbit_training``) over the same base in bf16.
- ``generate_8_vs_1_adapters``: greedy generation for a batch whose rows use 8 LoRA adapters over the
  same batch through one.
- ``score_5_vs_1_labels``: likelihood scoring of 5 candidate labels over 1.

Run on one GPU from the repository root::

    python benchmarks/gpu.py                 # about 8 minutes on one H100; writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --smoke --out /tmp/gpu.json   # CPU, tiny sizes: checks the script runs (CI)

``--smoke`` runs every section on the built-in tiny Gemma 3 and LLaVA; its numbers mean nothing, and the
sections that need CUDA (peak memory, bitsandbytes) are written as ``null`` with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's medadapt

import torch  # noqa: E402
from harness import LABELS, QA, QUESTION  # noqa: E402  (beside this script)

DEFAULT_OUT = HERE / "results" / "gpu.json"
TARGETS: dict[str, tuple[str, float]] = {
    "trl_time_ratio": ("<=", 1.10),
    "trl_memory_ratio": ("<=", 1.05),
    "gemma3_4b_bf16_gc_batch8_peak_gb": ("<=", 80.0),
    "trl_epoch2_throughput_ratio": (">=", 1.3),
    "trl_epoch1_time_ratio": ("<=", 1.10),
}


@dataclass
class Settings:
    """Sizes and repeat counts of one mode."""

    real_size: bool = True
    batch: int = 8
    lora_r: int = 16
    warmup: int = 2
    steps: int = 5
    adapters: int = 8
    gen_images: int = 8
    gen_tokens: int = 16
    score_images: int = 8
    repeats: int = 3


MODES = {"full": Settings(), "smoke": Settings(real_size=False, batch=2, warmup=1, steps=1, gen_images=8, gen_tokens=2, score_images=2, repeats=1)}


# -- bases ----------------------------------------------------------------------------------------------
def gemma3_4b() -> tuple[Any, Any]:
    """Gemma 3 at MedGemma-4B's configuration (SigLIP 896px + 34-layer Gemma 3 text), random bf16 weights on CUDA."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    from medadapt.tiny_generative import GEMMA3_CHAT_TEMPLATE, generative_byte_tokenizer

    named = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
    tokenizer = generative_byte_tokenizer(named, extra_tokens=("<start_of_turn>", "<end_of_turn>"), chat_template=GEMMA3_CHAT_TEMPLATE, max_length=8192)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 896, "width": 896}), tokenizer=tokenizer,
                                chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=256)
    tok = processor.tokenizer
    config = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                           num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False),
        text_config=dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                         sliding_window=1024, max_position_embeddings=131072, vocab_size=262208,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        mm_tokens_per_image=256, boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id,
    )
    return _on_gpu(lambda: Gemma3ForConditionalGeneration(config)), processor


def llava_7b() -> tuple[Any, Any]:
    """LLaVA-1.5 at 7B's configuration (CLIP ViT-L/14-336 + Llama-2-7B text), random bf16 weights on CUDA."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from medadapt.tiny_generative import LLAVA_CHAT_TEMPLATE, generative_byte_tokenizer

    tokenizer = generative_byte_tokenizer({"image_token": "<image>"}, chat_template=LLAVA_CHAT_TEMPLATE, max_length=4096)
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
                               tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=4096, vocab_size=32064,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.image_token_id, image_seq_length=576, vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    return _on_gpu(lambda: LlavaForConditionalGeneration(config)), processor


def _on_gpu(build: Callable[[], Any]) -> Any:
    """Build a model directly on the GPU in bf16 (seeded; random weights at real size in seconds)."""
    before = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = build()
    finally:
        torch.set_default_dtype(before)
    return model.eval()


def base(name: str, s: Settings) -> tuple[Any, Any]:
    if not s.real_size:
        from medadapt.tiny_generative import tiny_generative

        return tiny_generative({"gemma3": "tiny-gemma3", "llava": "tiny-llava"}[name], seed=0)
    return gemma3_4b() if name == "gemma3" else llava_7b()


def quantize_4bit(model: Any) -> Any:
    """Replace the language model's Linear layers by bitsandbytes NF4 layers (what ``from_pretrained(...,
    quantization_config=BitsAndBytesConfig(load_in_4bit=True))`` does), in place."""
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and "lm_head" not in f"{name}.{child_name}":
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", device="cpu")
                layer.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    layer.bias = torch.nn.Parameter(child.bias.data.cpu(), requires_grad=False)
                setattr(module, child_name, layer.to("cuda"))  # quantizes on the move to the GPU
                del child
    model.is_loaded_in_4bit = True
    gc.collect()
    torch.cuda.empty_cache()
    return model


# -- measuring --------------------------------------------------------------------------------------------
def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    gc.collect()
    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda() else None


def seconds(fn: Callable[[], Any], n: int = 1) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


def images(n: int, size: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def image_size(model: Any) -> int:
    return int(model.base_model.config.vision_config.image_size)


def lora_config(model: Any, r: int) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=model.family.default_lora_targets(model.base_model))


def wrap(hf_model: Any, processor: Any) -> Any:
    from medadapt import ContinualVLM
    from medadapt.backbones import backbone_from_model

    return ContinualVLM(backbone_from_model(hf_model, processor=processor, source=None))


def medadapt_step(model: Any, adapter: str, batch: Any, gradient_checkpointing: bool) -> Callable[[], float]:
    """The trainer's step on one batch: autocast (bf16 on CUDA), the causal-LM objective, AdamW on float32 LoRA weights."""
    from medadapt.training.memory import checkpointing_train_mode, enable_gradient_checkpointing, fp32_master_weights
    from medadapt.training.objectives import CausalLMObjective

    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = model.set_trainable([adapter])
    fp32_master_weights(params)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = CausalLMObjective()
    model.train()
    checkpointing_train_mode(model, gradient_checkpointing)
    device = "cuda" if cuda() else "cpu"

    def step() -> float:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda()):
            loss, report = objective(model, batch, adapter)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return report["loss"]

    return step


def vqa_batch(model: Any, n: int, domain: str) -> Any:
    from medadapt.training.objectives import Batch

    pairs = [QA[i % len(QA)] for i in range(n)]
    pixels = model.preprocess(images(n, image_size(model))).to(next(model.base_model.parameters()).device)
    keys = [(domain, i) for i in range(n)]  # which sample each row is: lets the image-token cache serve them
    return Batch(pixels, torch.full((n,), -1), [domain] * n, [q for q, _ in pairs], [a for _, a in pairs], keys)


def tokenised(processor: Any, batch: Any, size: int) -> dict[str, torch.Tensor]:
    """The batch as the HF model's own inputs (chat template, image tokens, answer-only labels)."""
    tok = processor.tokenizer
    rows, labels, full = [], [], None
    picture = images(1, size)[0]
    for q, a in zip(batch.questions, batch.answers):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids_prompt = processor(text=[prompt], images=[picture], return_tensors="pt")["input_ids"][0]
        full = processor(text=[prompt + " " + a], images=[picture], return_tensors="pt")
        ids = torch.cat([full["input_ids"][0], torch.tensor([tok.eos_token_id])])
        cut = int((ids[: len(ids_prompt)] == ids_prompt).int().cumprod(0).sum())
        rows.append(ids)
        labels.append(torch.cat([torch.full((cut,), -100), ids[cut:]]))
    longest = max(len(x) for x in rows)
    out = {"input_ids": torch.full((len(rows), longest), tok.pad_token_id), "labels": torch.full((len(rows), longest), -100),
           "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long)}
    full = full or {}
    for i, (ids, lab) in enumerate(zip(rows, labels)):
        out["input_ids"][i, : len(ids)], out["labels"][i, : len(ids)], out["attention_mask"][i, : len(ids)] = ids, lab, 1
    if "token_type_ids" in full:  # Gemma 3: 1 on image tokens
        out["token_type_ids"] = (out["input_ids"] == tok.image_token_id).long()
    out["pixel_values"] = batch.pixel_values.detach().cpu()
    return out


# -- sections ---------------------------------------------------------------------------------------------
def bench_train(hf_model: Any, processor: Any, s: Settings, gradient_checkpointing: bool) -> dict[str, Any]:
    """medadapt's step on ``hf_model``: step seconds, tokens/s, peak memory."""
    model = wrap(hf_model, processor)
    torch.manual_seed(1)
    model.add_domain("vqa", [], "{}", adapter=lora_config(model, s.lora_r), task="vqa")
    batch = vqa_batch(model, s.batch, "vqa")
    tokens = int(tokenised(processor, batch, image_size(model))["attention_mask"].sum())
    step = medadapt_step(model, "vqa", batch, gradient_checkpointing)
    for _ in range(s.warmup):
        step()
    reset_peak()
    step()  # peak memory of a steady-state step
    peak = peak_gb()
    took = seconds(step, s.steps)
    model.set_trainable([])
    out = {"step_s": took, "tokens_per_step": tokens, "tokens_per_s": tokens / took, "peak_gb": peak}
    del model, step, batch
    reset_peak()
    return out


def bench_cached_train(hf_model: Any, processor: Any, s: Settings) -> dict[str, Any]:
    """medadapt's LM-only step with the image-token cache: epoch 1 (every step makes and keeps the batch's
    image tokens: the cache is emptied before each) and epoch 2 (every step reads them)."""
    from medadapt.families.image_token_cache import ImageCacheSettings

    model = wrap(hf_model, processor)
    torch.manual_seed(1)
    model.add_domain("vqa", [], "{}", adapter=lora_config(model, s.lora_r), task="vqa")
    batch = vqa_batch(model, s.batch, "vqa")
    step = medadapt_step(model, "vqa", batch, False)
    with model.scorer.caching_images(ImageCacheSettings()) as cache:
        def first_epoch() -> float:
            cache.clear()
            return step()

        for _ in range(s.warmup):
            first_epoch()
        epoch1 = seconds(first_epoch, s.steps)
        step()
        epoch2 = seconds(step, s.steps)
        stats = cache.stats()
    model.set_trainable([])  # the model goes out of scope on return (no del: a closure holds the step)
    return {"epoch1_step_s": epoch1, "epoch2_step_s": epoch2, "cache": stats,
            "bytes_per_image": stats["memory_bytes"] / max(1, stats["entries"])}


def bench_trl(hf_model: Any, processor: Any, s: Settings, targets: Any) -> dict[str, Any]:
    """TRL's SFTTrainer on the same base, LoRA, batch and token ids: seconds per step after warm-up, peak memory."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model = wrap(hf_model, processor)  # only to preprocess the batch exactly like the medadapt side (adds no adapter)
    batch = vqa_batch(model, s.batch, "vqa")
    inputs = tokenised(processor, batch, image_size(model))
    device = next(hf_model.parameters()).device
    tokens = int(inputs["attention_mask"].sum())
    del model

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            sync()
            if state.global_step == s.warmup:
                reset_peak_keep()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            sync()
            self.times.append(time.perf_counter() - self.start)

    def reset_peak_keep() -> None:
        if cuda():
            torch.cuda.reset_peak_memory_stats()

    clock = Clock()
    total = s.warmup + 1 + s.steps
    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=s.batch, max_steps=total, learning_rate=1e-4, bf16=cuda(),
            use_cpu=not cuda(), report_to=[], save_strategy="no", logging_steps=10**6, remove_unused_columns=False,
            dataset_kwargs={"skip_prepare_dataset": True}, gradient_checkpointing=False, dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=hf_model, args=config, train_dataset=Dataset.from_dict({"row": list(range(s.batch * total))}),
            data_collator=lambda rows: {k: v.to(device) for k, v in inputs.items()},
            peft_config=LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, target_modules=targets),
            processing_class=processor.tokenizer, callbacks=[clock],
        )
        reset_peak()
        trainer.train()
        peak = peak_gb()
    timed = clock.times[s.warmup + 1 :] or clock.times[-1:]
    took = sum(timed) / len(timed)
    del trainer
    reset_peak()
    return {"step_s": took, "tokens_per_step": tokens, "tokens_per_s": tokens / took, "peak_gb": peak, "steps_timed": len(timed)}


def bench_generate(hf_model: Any, processor: Any, s: Settings) -> dict[str, Any]:
    model = wrap(hf_model, processor)
    names = [f"site{i}" for i in range(s.adapters)]
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        model.add_domain(name, [], "{}", adapter=lora_config(model, s.lora_r), task="vqa")
        with torch.no_grad():  # LoRA B is zero at init: make the adapters differ
            for p in model.adapter_parameters(name):
                p.add_(torch.randn_like(p) * 0.02)
    pixels = model.preprocess(images(s.gen_images, image_size(model))).to(next(hf_model.parameters()).device)
    questions = [QA[i % len(QA)][0] for i in range(s.gen_images)]
    mixed = [names[i % len(names)] for i in range(s.gen_images)]
    single = [names[0]] * s.gen_images

    def run(adapters: list[str]) -> Callable[[], Any]:
        return lambda: model.scorer.generate(pixels, questions, adapters, max_new_tokens=s.gen_tokens)

    with model.evaluating(), torch.autocast("cuda" if cuda() else "cpu", dtype=torch.bfloat16, enabled=cuda()):
        run(mixed)(), run(single)()
        times = {"mixed": [], "single": []}
        for r in range(s.repeats):
            for side in (("mixed", "single") if r % 2 == 0 else ("single", "mixed")):
                times[side].append(seconds(run(mixed if side == "mixed" else single)))
    mixed_s, single_s = sorted(times["mixed"])[len(times["mixed"]) // 2], sorted(times["single"])[len(times["single"]) // 2]
    return {"generate_8_vs_1_adapters": mixed_s / single_s, "mixed_s": mixed_s, "single_s": single_s,
            "images": s.gen_images, "new_tokens": s.gen_tokens, "adapters": s.adapters}


def bench_scoring(hf_model: Any, processor: Any, s: Settings) -> dict[str, Any]:
    import dataclasses

    model = wrap(hf_model, processor)
    torch.manual_seed(1)
    five = model.add_domain("five", LABELS, QUESTION, adapter=lora_config(model, s.lora_r))
    one = dataclasses.replace(five, labels=[max(LABELS, key=len)])
    pixels = model.preprocess(images(s.score_images, image_size(model))).to(next(hf_model.parameters()).device)
    with model.evaluating(), torch.no_grad(), torch.autocast("cuda" if cuda() else "cpu", dtype=torch.bfloat16, enabled=cuda()):
        model.scorer.logits(pixels, five, "five"), model.scorer.logits(pixels, one, "five")
        times = {"five": [], "one": []}
        for r in range(s.repeats):
            for side in (("five", "one") if r % 2 == 0 else ("one", "five")):
                times[side].append(seconds(lambda: model.scorer.logits(pixels, five if side == "five" else one, "five")))
    five_s, one_s = sorted(times["five"])[len(times["five"]) // 2], sorted(times["one"])[len(times["one"]) // 2]
    return {"score_5_vs_1_labels": five_s / one_s, "five_s": five_s, "one_s": one_s, "images": s.score_images}


# -- the run ------------------------------------------------------------------------------------------------
def check(key: str, value: float | None) -> dict[str, Any]:
    op, threshold = TARGETS[key]
    if value is None:
        return {"value": None, "target": f"{op} {threshold}", "pass": None}
    return {"value": value, "target": f"{op} {threshold}", "pass": bool(value >= threshold if op == ">=" else value <= threshold)}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def run(mode: str, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    s = MODES[mode]
    if s.real_size and not cuda():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU for real-size bases; use --smoke on CPU.")
    started = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "gpu", "schema": 1, "mode": mode, "settings": asdict(s), "null_reasons": {}}
    no_cuda = "no CUDA device (smoke run on CPU): peak memory is not measured"

    def fresh(name: str) -> tuple[Any, Any]:  # every section on its own base: no section sees another's adapters
        reset_peak()
        return base(name, s)

    log("gemma3: label scoring 5 vs 1")
    result["scoring"] = bench_scoring(*fresh("gemma3"), s)
    log("gemma3: mixed-adapter generation 8 vs 1")
    result["generation"] = bench_generate(*fresh("gemma3"), s)
    log("gemma3: medadapt train step without / with gradient checkpointing")
    result["gemma3_train"] = {"no_gc": bench_train(*fresh("gemma3"), s, gradient_checkpointing=False)}
    result["gemma3_train"]["gc"] = bench_train(*fresh("gemma3"), s, gradient_checkpointing=True)
    log("gemma3: medadapt LM-only step with the image-token cache, epoch 1 and epoch 2")
    result["gemma3_cached"] = bench_cached_train(*fresh("gemma3"), s)
    log("gemma3: TRL SFTTrainer, same LoRA, batch and tokens")
    hf, processor = fresh("gemma3")
    targets = wrap(hf, processor).family.default_lora_targets(hf)
    result["trl"] = bench_trl(hf, processor, s, targets)
    del hf
    reset_peak()

    log("llava: bf16 vs 4-bit")
    result["llava_bf16"] = bench_train(*fresh("llava"), s, gradient_checkpointing=True)
    hf, processor = fresh("llava")
    if cuda():
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            result["llava_4bit"] = None
            result["null_reasons"]["llava_4bit"] = "bitsandbytes is not installed on the GPU machine"
        else:
            from peft import prepare_model_for_kbit_training

            quantize_4bit(hf)
            prepare_model_for_kbit_training(hf, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
            result["llava_4bit"] = bench_train(hf, processor, s, gradient_checkpointing=True)
    else:
        result["llava_4bit"] = None
        result["null_reasons"]["llava_4bit"] = "QLoRA needs CUDA and bitsandbytes (smoke run on CPU)"
    del hf
    reset_peak()

    ours, trl = result["gemma3_train"]["no_gc"], result["trl"]
    four = result["llava_4bit"] or {}
    values = {
        "trl_time_ratio": ratio(ours["step_s"], trl["step_s"]),
        "trl_memory_ratio": ratio(ours["peak_gb"], trl["peak_gb"]),
        "grad_ckpt_memory_ratio": ratio(result["gemma3_train"]["gc"]["peak_gb"], ours["peak_gb"]),
        "gemma3_4b_bf16_gc_batch8_peak_gb": result["gemma3_train"]["gc"]["peak_gb"],
        "qlora_memory_ratio": ratio(four.get("peak_gb"), result["llava_bf16"]["peak_gb"]),
        "qlora_time_ratio": ratio(four.get("step_s"), result["llava_bf16"]["step_s"]),
        "trl_epoch2_throughput_ratio": ratio(trl["step_s"], result["gemma3_cached"]["epoch2_step_s"]),
        "trl_epoch1_time_ratio": ratio(result["gemma3_cached"]["epoch1_step_s"], trl["step_s"]),
        "generate_8_vs_1_adapters": result["generation"]["generate_8_vs_1_adapters"],
        "score_5_vs_1_labels": result["scoring"]["score_5_vs_1_labels"],
    }
    for key, value in values.items():
        if value is None and key not in result["null_reasons"]:
            result["null_reasons"][key] = no_cuda if not cuda() else "not measured (see the sections above)"
    result.update(values)
    result["targets"] = {key: check(key, values[key]) for key in TARGETS}
    result["device"] = torch.cuda.get_device_name(0) if cuda() else "cpu"
    result["versions"] = versions()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    from medadapt._io import atomic_write_json

    atomic_write_json(out, result)
    return result


def versions() -> dict[str, str]:
    import platform

    import peft
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    for name in ("trl", "accelerate", "bitsandbytes"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny bases on CPU: checks the script runs (numbers mean nothing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run("smoke" if args.smoke else "full", args.out)
    print(json.dumps({k: result[k] for k in ("trl_time_ratio", "trl_memory_ratio", "grad_ckpt_memory_ratio", "qlora_memory_ratio",
                                               "generate_8_vs_1_adapters", "score_5_vs_1_labels")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
