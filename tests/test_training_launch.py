"""accelerate's launcher decides precision and accumulation; unsupported distributed types are refused;
the memory options (gradient checkpointing, QLoRA preparation, DataLoader workers) and bf16 autocast."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medadapt.errors import ConfigError
from medadapt.training import trainer as trainer_module
from medadapt.training.batches import BatchSchedule, PixelStore, phase_batches
from medadapt.training.trainer import ContinualTrainer

from .training_helpers import ROOT, one_thread, recipe_command, subprocess_env, tiny_config, tiny_run, write_yaml  # noqa: F401

SMALL = dict(n_domains=1, n_train=24, n_test=12)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide mixed-precision setting: start and leave each test without one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state()
    GradientState._reset_state()


# -- the launcher's settings ---------------------------------------------------------------------------
def test_launcher_mixed_precision_and_accumulation_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    trainer = ContinualTrainer(tiny_config(tmp_path / "a", "continual", **SMALL), progress=False)
    assert trainer.accelerator.mixed_precision == "bf16"
    assert trainer.launch.grad_accum_steps == 3 and "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" in trainer.launch.grad_accum_source
    # the run config overrides the launcher only when it is given
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    explicit = tiny_config(tmp_path / "b", "continual", overrides=["train.mixed_precision=no", "train.grad_accum_steps=1"], **SMALL)
    trainer = ContinualTrainer(explicit, progress=False)
    assert trainer.accelerator.mixed_precision == "no" and trainer.launch.grad_accum_steps == 1
    assert "run config" in trainer.launch.mixed_precision_source


@pytest.mark.parametrize("variable, what", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_unsupported_distributed_types_are_refused_before_anything_loads(tmp_path, monkeypatch, variable, what):
    monkeypatch.setenv(variable, "true")
    monkeypatch.setattr(trainer_module, "build_base", lambda config: pytest.fail("the base was loaded"))
    with pytest.raises(ConfigError, match=rf"launched with {what} .*accelerate launch --multi_gpu.*quantization: 4bit"):
        ContinualTrainer(tiny_config(tmp_path / "run", "continual", **SMALL), progress=False)
    assert not (tmp_path / "run").exists()


def test_a_callers_deepspeed_accelerator_is_refused(tmp_path):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    fake = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED)
    with pytest.raises(ConfigError, match=r"distributed type is DeepSpeed \(DEEPSPEED\).*--multi_gpu"):
        ContinualTrainer(tiny_config(tmp_path / "run", "continual", **SMALL), accelerator=fake, progress=False)


@pytest.mark.timeout(180)
def test_an_fsdp_accelerate_config_file_gets_the_refusal(tmp_path):
    """`accelerate launch --config_file` with an FSDP config: the recipe exits 2 with the message, nothing written."""
    config_file = tmp_path / "fsdp.yaml"
    config_file.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nuse_cpu: true\nnum_processes: 1\nnum_machines: 1\n"
        "machine_rank: 0\nmixed_precision: 'no'\nfsdp_config:\n  fsdp_sharding_strategy: FULL_SHARD\n"
    )
    run_cfg = write_yaml(tmp_path / "run.yaml", tiny_run(tmp_path / "out", "continual", **SMALL))
    exe = [sys.executable, "-m", "accelerate.commands.launch"]
    done = subprocess.run([*exe, "--config_file", str(config_file), *recipe_command("continual", "--config", str(run_cfg))[1:]],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=170)
    assert done.returncode != 0
    assert "medadapt does not support" in done.stderr and "--multi_gpu" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


# -- bf16 autocast on CPU ------------------------------------------------------------------------------
def _bf16_config(path, **overrides):
    return tiny_config(path, "continual", overrides=["train.mixed_precision=bf16", "train.checkpoint_every=1", "train.batch_size=8", *overrides], **SMALL)


def test_bf16_autocast_runs_inside_the_training_forward(tmp_path, one_thread):  # noqa: F811
    trainer = ContinualTrainer(_bf16_config(tmp_path / "run"), progress=False)
    trainer.setup()
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype) if torch.is_grad_enabled() else None)
             for m in trainer.model.base_model.modules() if type(m) is torch.nn.Linear]
    try:
        trainer.run()
    finally:
        for hook in hooks:
            hook.remove()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert seen and set(seen) == {torch.bfloat16}, f"training-forward Linear outputs had dtypes {set(seen)}"
    assert all(p.dtype == torch.float32 for p in trainer.model.adapter_parameters("shared"))  # fp32 master weights


def test_bf16_run_resumes_exactly(tmp_path, one_thread, monkeypatch):  # noqa: F811
    reference = ContinualTrainer(_bf16_config(tmp_path / "ref"), progress=False)
    want = reference.run()

    calls = {"n": 0}
    original = ContinualTrainer._checkpoint

    def interrupted(self, optimizer):
        original(self, optimizer)
        calls["n"] += 1
        if calls["n"] == 2:  # inside the phase, after the second step's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(ContinualTrainer, "_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ContinualTrainer(_bf16_config(tmp_path / "killed"), progress=False).run()
    monkeypatch.setattr(ContinualTrainer, "_checkpoint", original)
    torch.manual_seed(12345)  # a fresh process would start from another RNG state: the checkpoint must restore it
    resumed = ContinualTrainer(_bf16_config(tmp_path / "killed"), resume=True, progress=False)
    got = resumed.run()
    assert got["accuracy_matrix"] == want["accuracy_matrix"]
    for a, b in zip(reference.model.adapter_parameters("shared"), resumed.model.adapter_parameters("shared")):
        assert torch.equal(a, b)
    assert got["launch"]["mixed_precision"] == "bf16"


# -- gradient checkpointing ----------------------------------------------------------------------------
def _grads(folder, checkpointing: bool):
    trainer = ContinualTrainer(tiny_config(folder, "continual", overrides=[f"train.gradient_checkpointing={str(checkpointing).lower()}"], **SMALL), progress=False)
    trainer.setup()
    model = trainer.model
    params = model.set_trainable(["shared"])
    with torch.no_grad():  # make lora_B non-zero so every LoRA weight gets a gradient
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.train()
    from medadapt.training.memory import checkpointed_layers, checkpointing_train_mode

    checkpointing_train_mode(model, True)
    layers = checkpointed_layers(model)
    calls = {"n": 0}
    inner = [m for layer in layers for m in layer.modules() if type(m) is torch.nn.Linear] or [m for m in model.base_model.modules() if type(m) is torch.nn.Linear]
    hooks = [m.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for m in inner]  # recompute calls them again
    batch = trainer.store.batch([("xr", i) for i in range(8)])
    loss, _ = trainer.objective(model, batch, "shared")
    forwards = calls["n"]
    loss.backward()
    for hook in hooks:
        hook.remove()
    return [p.grad.clone() for p in params], len(layers), forwards, calls["n"] - forwards


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, one_thread):  # noqa: F811
    plain, n_plain, _, recomputed_plain = _grads(tmp_path / "plain", False)
    checked, n_layers, forwards, recomputed = _grads(tmp_path / "checked", True)
    assert n_plain == 0 and recomputed_plain == 0
    assert n_layers > 0 and forwards > 0 and recomputed > 0, "checkpointed layers must run again in backward"
    assert all(g.abs().max() > 0 for g in plain)
    for a, b in zip(plain, checked):
        assert torch.allclose(a, b, atol=1e-5)


def test_gradient_checkpointing_on_a_base_without_support_is_refused(tmp_path, monkeypatch):
    from transformers import CLIPModel

    monkeypatch.setattr(CLIPModel, "supports_gradient_checkpointing", False)
    trainer = ContinualTrainer(tiny_config(tmp_path / "run", "continual", overrides=["train.gradient_checkpointing=true"], **SMALL), progress=False)
    with pytest.raises(ConfigError, match="does not support gradient checkpointing.*gradient_checkpointing: false"):
        trainer.setup()


# -- QLoRA plumbing ------------------------------------------------------------------------------------
def test_a_quantized_base_goes_through_peft_prepare_model_for_kbit_training(tmp_path, monkeypatch):
    import peft

    from medadapt.training import memory

    seen = {}
    real = peft.prepare_model_for_kbit_training

    def spy(model, **kwargs):
        seen.update(model=model, **kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", spy)
    real_build = trainer_module.build_base

    def half_base(config):  # a bf16 base standing in for the 4-bit one (bitsandbytes needs CUDA)
        model = real_build(config)
        model.base_model.to(torch.bfloat16)
        return model

    monkeypatch.setattr(trainer_module, "build_base", half_base)
    config = tiny_config(tmp_path / "run", "continual", overrides=["quantization=4bit", "train.gradient_checkpointing=true"], **SMALL)
    trainer = ContinualTrainer(config, progress=False)
    trainer.setup()
    assert seen["model"] is trainer.model.base_model
    assert seen["use_gradient_checkpointing"] is True and seen["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    frozen = [p for n, p in trainer.model.base_model.named_parameters() if "lora_" not in n]
    assert frozen and all(p.dtype == torch.float32 and not p.requires_grad for p in frozen)  # norms etc. upcast, base frozen
    assert memory.checkpointed_layers(trainer.model)


# -- DataLoader workers --------------------------------------------------------------------------------
def test_dataloader_workers_give_the_same_batches_in_the_same_order(tmp_path):
    trainer = ContinualTrainer(tiny_config(tmp_path / "run", "continual", **SMALL), progress=False)
    trainer.setup()
    pool = [("xr", i) for i in range(24)]
    schedule = BatchSchedule(pool, 5, 2, 0, "0:shared")
    inline = list(phase_batches(trainer.store, schedule, 2, None, 0.0, workers=0))
    store = PixelStore(trainer.model.preprocess)
    store.register("xr", "train", trainer.data["xr"].splits["train"])
    loaded = list(phase_batches(store, schedule, 2, None, 0.0, workers=2))
    assert len(inline) == len(loaded) == schedule.steps - 2
    for a, b in zip(inline, loaded):
        assert a.keys == b.keys and torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.labels, b.labels)


def test_the_grad_scaler_and_numpy_python_rng_join_the_checkpoint_and_are_restored(tmp_path, one_thread, monkeypatch):  # noqa: F811
    """fp16 on a GPU gives the accelerator a GradScaler; a CPU GradScaler stands in for it here."""
    config = tiny_config(tmp_path / "run", "continual", overrides=["train.checkpoint_every=1", "train.batch_size=8"], **SMALL)
    trainer = ContinualTrainer(config, progress=False)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    original = ContinualTrainer._checkpoint

    def interrupted(self, optimizer):
        original(self, optimizer)
        raise KeyboardInterrupt

    monkeypatch.setattr(ContinualTrainer, "_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    monkeypatch.setattr(ContinualTrainer, "_checkpoint", original)
    import json

    saved = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["scaler"]
    assert saved["scale"] == trainer.accelerator.scaler.get_scale() == 2.0**11  # grew once (growth_interval=1) after step 1
    import random

    import numpy as np
    from safetensors.torch import load_file

    np.random.seed(999), random.seed(999)  # a fresh process: other numpy / Python generator states
    resumed = ContinualTrainer(config, resume=True, progress=False)
    resumed.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    resumed.setup()
    assert resumed.accelerator.scaler.get_scale() == saved["scale"] and resumed.accelerator.scaler.state_dict() == saved
    rng = load_file(str(tmp_path / "run" / "checkpoints" / "rng.safetensors"))
    assert np.array_equal(np.random.get_state()[1], rng["numpy"].numpy().astype(np.uint32))  # numpy's generator is back
    meta = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["rng"]
    assert list(random.getstate()[1]) == meta["python"]["state"]
