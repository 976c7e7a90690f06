"""Gathered mixed-batch LoRA: exact per-row results in a fixed number of ops, fallbacks that say so,
and a cache of stacked adapter weights that is never served stale."""

from __future__ import annotations

import gc

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from torch.overrides import TorchFunctionMode

from medadapt import AdapterError
from medadapt.adapters.lora import BASE, LoraBank
from medadapt.adapters.per_call import has_dispatch
from tests.conftest import make_image_list

pytestmark = pytest.mark.usefixtures("core_single_thread")


class Toy(nn.Module):
    """Token ids (N, T) -> (N, T, 8) through an embedding and three Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.out(self.q_proj(h).relu() + self.v_proj(h))


def lora(r: int = 4, targets=("q_proj", "v_proj", "out"), **kwargs) -> LoraConfig:
    kwargs.setdefault("lora_dropout", 0.0)
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, **kwargs)


def toy_bank(n: int = 5, seed: int = 1, **config) -> LoraBank:
    bank = LoraBank(Toy())
    torch.manual_seed(seed)
    for i in range(n):
        bank.add(f"a{i}", lora(**config))
    bank.base.eval()
    return bank


def per_row(bank: LoraBank, ids: torch.Tensor, names: list[str]) -> torch.Tensor:
    """The reference: each row alone through its own adapter (or the base)."""
    rows = []
    for i, name in enumerate(names):
        with bank.activate(None if name == BASE else name):
            rows.append(bank.base(ids[i : i + 1]))
    return torch.cat(rows)


def mixed(bank: LoraBank, ids: torch.Tensor, names: list[str], **kwargs) -> torch.Tensor:
    with bank.mixed(names, **kwargs):
        return bank.base(ids)


NAMES = ["a0", "a3", BASE, "a1", "a0", "a4", "a2", BASE, "a3", "a1"]


@torch.no_grad()
def test_gathered_rows_equal_per_row_calls_for_sequences_and_decode_steps(monkeypatch):
    bank = toy_bank()
    calls = []
    original = LoraLinear._mixed_batch_forward
    monkeypatch.setattr(LoraLinear, "_mixed_batch_forward", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    ids = torch.randint(0, 50, (len(NAMES), 7))
    for x in (ids, ids[:, -1:]):  # (N, T) prompts and one-token decoding steps
        expected = per_row(bank, x, NAMES)
        got = mixed(bank, x, NAMES)
        assert bank.last_mixed_path == "gathered" and bank.last_mixed.gathered_layers == 3 and not bank.last_mixed.fallback
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(mixed(bank, x, NAMES, gather=False), expected, atol=1e-5, rtol=0)
        assert bank.last_mixed_path == "peft"
    assert len(calls) == 2 * 3  # only the gather=False calls went through peft's sub-batches
    # a 2-D input (N, in) straight into one LoRA layer
    h = torch.randn(len(NAMES), 16)
    with bank.mixed(NAMES):
        got = bank.base.q_proj(h)
    torch.testing.assert_close(got, torch.stack([_single(bank, "q_proj", n, h[i]) for i, n in enumerate(NAMES)]), atol=1e-5, rtol=0)


def _single(bank: LoraBank, layer: str, name: str, x: torch.Tensor) -> torch.Tensor:
    with bank.activate(None if name == BASE else name):
        return getattr(bank.base, layer)(x[None])[0]


class CountOps(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_op_count_does_not_grow_with_the_number_of_adapters():
    """The cost is a fixed number of batched ops, not one sub-batch per adapter."""
    bank = toy_bank(n=16)
    ids = torch.randint(0, 50, (16, 5))
    counts = {}
    for k in (2, 16):
        names = [f"a{i % k}" for i in range(16)]
        with bank.mixed(names):  # fills the cache
            bank.base(ids)
        with bank.mixed(names), CountOps() as ops:
            bank.base(ids)
        counts[k] = ops.count
    assert counts[2] == counts[16]
    with bank.mixed([f"a{i}" for i in range(16)], gather=False), CountOps() as ops:
        bank.base(ids)
    assert ops.count > counts[16]  # peft's path: per-adapter sub-batches


# -- fallbacks ------------------------------------------------------------------------------------
@torch.no_grad()
def test_different_ranks_fall_back_and_stay_exact():
    bank = toy_bank(n=3)
    torch.manual_seed(5)
    bank.add("wide", lora(r=8, targets=("out",)))  # rank 8 only in `out`: q/v are still gathered
    ids = torch.randint(0, 50, (6, 4))
    names = ["a0", "wide", "a1", BASE, "a2", "wide"]
    torch.testing.assert_close(mixed(bank, ids, names), per_row(bank, ids, names), atol=1e-5, rtol=0)
    report = bank.last_mixed
    assert report.path == "partial" and report.gathered_layers == 2
    assert report.fallback == {"out": "adapters of different ranks"}
    # without the rank-8 adapter in the batch, every layer is gathered again
    mixed(bank, ids, ["a0", "a1", "a2", BASE, "a0", "a1"])
    assert bank.last_mixed_path == "gathered"


@torch.no_grad()
def test_dora_embedding_and_dropout_fall_back_with_a_reason():
    ids = torch.randint(0, 50, (4, 3))
    names = ["a0", "a1", BASE, "a0"]
    dora = toy_bank(n=2, use_dora=True)
    torch.testing.assert_close(mixed(dora, ids, names), per_row(dora, ids, names), atol=1e-5, rtol=0)
    assert dora.last_mixed_path == "peft" and dora.last_mixed.reasons == {"LoRA variant DoraLinearVariant: one sub-batch per adapter"}

    embed = toy_bank(n=2, targets=("embed", "q_proj"))
    torch.testing.assert_close(mixed(embed, ids, names), per_row(embed, ids, names), atol=1e-5, rtol=0)
    assert embed.last_mixed.path == "partial" and set(embed.last_mixed.fallback) == {"embed"}
    assert "layer type Embedding" in embed.last_mixed.fallback["embed"]

    drop = toy_bank(n=2, lora_dropout=0.5)
    mixed(drop, ids, names)
    assert drop.last_mixed_path == "gathered"  # eval mode: dropout is the identity
    drop.base.train()
    mixed(drop, ids, names)
    assert drop.last_mixed_path == "peft" and drop.last_mixed.reasons == {"LoRA dropout active (training mode)"}


def test_row_count_mismatch_is_a_clear_error():
    bank = toy_bank(n=2)
    ids = torch.randint(0, 50, (3, 2))
    for gather in (True, False):
        with pytest.raises(AdapterError, match="2 adapter names were given but a LoRA layer received 3 rows"):
            mixed(bank, ids, ["a0", "a1"], gather=gather)


# -- cache invalidation ---------------------------------------------------------------------------
@torch.no_grad()
def _check_fresh(bank: LoraBank, ids: torch.Tensor, names: list[str], before: torch.Tensor | None = None) -> torch.Tensor:
    got = mixed(bank, ids, names)
    assert bank.last_mixed_path == "gathered"
    torch.testing.assert_close(got, per_row(bank, ids, names), atol=1e-5, rtol=0)
    if before is not None:
        assert not torch.allclose(got, before, atol=1e-4)  # the change is visible: a stale stack would fail
    return got


def test_cached_stacks_are_never_served_stale():
    bank = toy_bank(n=4)
    ids = torch.randint(0, 50, (len(NAMES), 4))
    names = [n if n != "a4" else "a2" for n in NAMES]
    out = _check_fresh(bank, ids, names)
    assert bank.gather.nbytes() > 0
    # a training step (in-place optimizer update) on one adapter
    params = [p for n, p in bank.base.named_parameters() if ".a1." in n]
    bank.set_trainable(["a1"])
    loss = mixed(bank, ids, names).square().mean()  # through the gathered path, with autograd
    loss.backward()
    torch.optim.SGD(params, lr=0.5).step()
    bank.set_trainable([])
    out = _check_fresh(bank, ids, names, out)
    # load_state_dict with other weights
    state = {k: 0.3 * torch.randn_like(v) for k, v in bank.state_dict("a3").items()}
    bank.load_state_dict("a3", state)
    out = _check_fresh(bank, ids, names, out)
    # a parameter's storage replaced (``.data =``)
    with torch.no_grad():
        bank.base.v_proj.lora_B["a0"].weight.data = 0.3 * torch.randn_like(bank.base.v_proj.lora_B["a0"].weight)
    out = _check_fresh(bank, ids, names, out)
    # remove, then add again under the same name with other weights
    bank.remove("a2")
    gc.collect()
    torch.manual_seed(99)
    bank.add("a2", lora())
    out = _check_fresh(bank, ids, names, out)
    # a merged adapter (peft add_weighted_adapter) served in the batch
    bank.add_weighted("m", ["a0", "a1"], [0.7, 0.6], "linear")
    bank.base.eval()
    _check_fresh(bank, ids, ["m", "a1", "m", BASE, "a0", "a2", "a3", "m", "a2", "a3"])


def test_gradients_through_a_gathered_batch_equal_peft_path():
    bank = toy_bank(n=3)
    bank.set_trainable(["a0", "a2"])
    ids = torch.randint(0, 50, (6, 3))
    names = ["a0", "a1", "a2", BASE, "a2", "a0"]
    grads = {}
    for gather in (True, False):
        bank.base.zero_grad()
        with bank.mixed(names, gather=gather):
            bank.base(ids).square().sum().backward()
        grads[gather] = {n: p.grad.clone() for n, p in bank.base.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) == 2 * 2 * 3
    for key, grad in grads[False].items():
        torch.testing.assert_close(grads[True][key], grad, atol=1e-5, rtol=1e-5)


# -- the real models ------------------------------------------------------------------------------
def test_continual_vlm_mixed_batch_is_gathered(tiny_vlm):
    model = tiny_vlm
    domains = ["chest", "derm", "fundus", "histo", "knee", "chest", "histo"]
    images = make_image_list(len(domains), seed=3)
    mixed_probs = model.predict_proba(images, domains)
    assert model.lora.last_mixed_path == "gathered"  # the label prompts' mixed batch, the last one run
    for i, domain in enumerate(domains):
        torch.testing.assert_close(mixed_probs[i], model.predict_proba([images[i]], domain)[0], atol=1e-5, rtol=0)
    model.lora.gather_mixed = False
    for a, b in zip(model.predict_proba(images, domains), mixed_probs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert model.lora.last_mixed_path == "peft"


@torch.no_grad()
def test_causal_lm_generate_with_kv_cache_per_row_adapters():
    """The same mechanism serves a generative model's mixed-domain ``generate`` (KV-cache decoding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    bank = LoraBank(LlamaForCausalLM(config).eval())
    torch.manual_seed(1)
    for i in range(3):
        bank.add(f"g{i}", LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(3, 64, (5, 6))
    names = ["g0", "g2", BASE, "g1", "g0"]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "use_cache": True, "pad_token_id": 0}
    with bank.mixed(names):
        got = bank.base.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert bank.last_mixed_path == "gathered"
    for i, name in enumerate(names):
        with bank.activate(None if name == BASE else name):
            row = bank.base.generate(ids[i : i + 1], attention_mask=torch.ones_like(ids[i : i + 1]), **kwargs)
        assert torch.equal(got[i], row[0]), name
    with bank.activate(None):
        plain = bank.base.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    assert not torch.equal(plain, got)  # the adapters change what is generated


@torch.no_grad()
def test_nested_mixed_batches_restore_the_enclosing_one():
    bank = toy_bank(3)
    ids = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(5))
    outer_names, inner_names = ["a0", "a1", "a2"], ["a2", BASE, "a0"]
    with bank.activate(None):  # (indexes the layers)
        pass
    attrs = {id(m): dict(m.__dict__) for m in bank.base.modules()}
    with bank.mixed(outer_names):
        before = bank.base(ids)
        with bank.mixed(inner_names):
            inner = bank.base(ids)
        after = bank.base(ids)  # the outer batch's per-row adapters are back
    torch.testing.assert_close(inner, per_row(bank, ids, inner_names), atol=1e-5, rtol=0)
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    # no call changed any module's attributes: only the dispatching forward installed once per LoRA layer
    assert all(m.__dict__.get("forward") is attrs[id(m)].get("forward") for m in bank.base.modules())
    assert {name for name, m in bank.base.named_modules() if has_dispatch(m)} == {"q_proj", "v_proj", "out"}
    assert not any("forward" in m.__dict__ and not has_dispatch(m) for m in bank.base.modules())
