"""The peft internals medadapt relies on, named one by one (medadapt/adapters/lora_layers.py, gathered.py,
per_call.py, export/merged.py). A peft release that changes one of them fails here, by name, instead of
medadapt silently computing something else. pyproject's floor ``peft>=0.21`` is the oldest release that
passes this file (``update_layer(..., config=)`` and ``resolve_lora_variant(config=)`` exist from 0.19;
.ci/run's lowest-versions job runs this file against the floor)."""

from __future__ import annotations

import inspect

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer, check_target_module_exists
from torch import nn

from medadapt.adapters.lora_layers import STATE_PREFIX, add_to_layers


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(6, 5)
        self.other = nn.Linear(5, 3)

    def forward(self, x):
        return self.other(self.q_proj(x))


def wrapped(r: int = 2, alpha: int = 4, **extra):
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=r, lora_alpha=alpha, target_modules=["q_proj"], init_lora_weights=False, **extra), adapter_name="dx")
    return model, model.base_model.model.q_proj


def test_update_layer_takes_config_and_target_name_keywords():
    """lora_layers.add_to_layers calls ``layer.update_layer(name, r, lora_alpha=..., config=..., target_name=...)``."""
    params = inspect.signature(LoraLayer.update_layer).parameters
    assert list(params)[:4] == ["self", "adapter_name", "r", "lora_alpha"], list(params)
    assert "config" in params, "peft's LoraLayer.update_layer no longer takes config= (medadapt's fast adapter add needs it)"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) or "target_name" in params
    assert "config" in inspect.signature(LoraLinear.resolve_lora_variant).parameters


def test_lora_linear_layer_attributes_medadapt_reads():
    model, layer = wrapped()
    assert type(layer) is LoraLinear and isinstance(layer, LoraLayer) and isinstance(layer, BaseTunerLayer)
    for attr, kind in (("lora_A", nn.ModuleDict), ("lora_B", nn.ModuleDict), ("lora_dropout", nn.ModuleDict),
                       ("r", dict), ("scaling", dict), ("lora_variant", dict), ("lora_bias", dict)):
        assert isinstance(getattr(layer, attr), kind), f"LoraLinear.{attr} is no longer a {kind.__name__}"
    assert layer.r["dx"] == 2 and layer.scaling["dx"] == pytest.approx(4 / 2)  # scaling = alpha / r
    assert layer.lora_A["dx"].weight.shape == (2, 6) and layer.lora_B["dx"].weight.shape == (5, 2)
    assert layer.lora_bias.get("dx") in (False, None) and "dx" not in layer.lora_variant
    assert layer.merged is False and layer.disable_adapters is False and layer.active_adapters == ["dx"]
    assert (layer.in_features, layer.out_features) == (6, 5) and isinstance(layer.base_layer, nn.Linear)
    for method in ("enable_adapters", "set_adapter", "delete_adapter", "get_delta_weight", "resolve_lora_variant"):
        assert callable(getattr(layer, method, None)), method


def test_forward_and_delta_weight_follow_the_formula_medadapt_recomputes():
    """per_call.uniform_linear and gathered.py recompute peft's forward as base + B(A(dropout(x))) * scaling;
    export/merged.py folds get_delta_weight(name) == B @ A * scaling into the base."""
    model, layer = wrapped()
    x = torch.randn(3, 6)
    a, b, s = layer.lora_A["dx"].weight, layer.lora_B["dx"].weight, layer.scaling["dx"]
    with torch.no_grad():
        expected = layer.base_layer(x) + (x @ a.T @ b.T) * s
        assert torch.allclose(layer(x), expected, atol=1e-6)
        assert torch.allclose(layer.get_delta_weight("dx"), b @ a * s, atol=1e-6)


def test_per_row_adapter_names_path():
    """gathered.peft_rows runs ``type(layer).forward(layer, x, adapter_names=[...])``: one adapter per row,
    ``__base__`` for none."""
    model, layer = wrapped()
    model.add_adapter("dy", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    x = torch.randn(3, 6)
    with torch.no_grad():
        out = type(layer).forward(layer, x, adapter_names=["dx", "__base__", "dy"])
        base = layer.base_layer(x)
        for row, name in ((0, "dx"), (2, "dy")):
            delta = x[row] @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T * layer.scaling[name]
            assert torch.allclose(out[row], base[row] + delta, atol=1e-6)
        assert torch.allclose(out[1], base[1], atol=1e-6)


def test_variants_resolve_and_forward_with_the_signature_medadapt_calls():
    """DoRA lives in ``layer.lora_variant[name]`` with ``forward(layer, active_adapter=, x=, result=)``;
    ``resolve_lora_variant(config=)`` is None for plain LoRA (medadapt's fast path) and not None for DoRA."""
    model, layer = wrapped(use_dora=True)
    assert "dx" in layer.lora_variant
    assert layer.resolve_lora_variant(config=LoraConfig(r=2, target_modules=["q_proj"])) is None
    assert layer.resolve_lora_variant(config=LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)) is not None
    x = torch.randn(2, 6)
    with torch.no_grad():
        base = layer.base_layer(x)
        out = layer.lora_variant["dx"].forward(layer, active_adapter="dx", x=x, result=base)
        assert torch.allclose(out, layer(x), atol=1e-5)


def test_add_to_layers_through_update_layer_matches_peft_add_adapter():
    """medadapt's constant-time add (update_layer on the wrapped layer) gives the layer peft's add_adapter gives."""
    config = LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj"], init_lora_weights=False)
    ours, layer = wrapped()
    add_to_layers({"q_proj": layer}, "nw", config)
    theirs, reference = wrapped()
    theirs.add_adapter("nw", config)
    assert layer.r["nw"] == reference.r["nw"] == 3 and layer.scaling["nw"] == reference.scaling["nw"]
    assert layer.lora_A["nw"].weight.shape == reference.lora_A["nw"].weight.shape
    assert layer.lora_B["nw"].weight.shape == reference.lora_B["nw"].weight.shape
    assert not layer.lora_A["nw"].weight.requires_grad  # added frozen


def test_state_dict_keys_and_target_matching():
    """Stage files use peft's key layout ``base_model.model.<path>.lora_A.weight``; targets use peft's own rule."""
    model, _ = wrapped()
    keys = set(get_peft_model_state_dict(model, adapter_name="dx"))
    assert keys == {f"{STATE_PREFIX}q_proj.lora_A.weight", f"{STATE_PREFIX}q_proj.lora_B.weight"}
    config = LoraConfig(r=2, target_modules=["q_proj"])
    assert check_target_module_exists(config, "encoder.q_proj") and not check_target_module_exists(config, "encoder.other")
    regex = LoraConfig(r=2, target_modules=r"^enc\.(q_proj)$")
    assert check_target_module_exists(regex, "enc.q_proj") and not check_target_module_exists(regex, "dec.q_proj")
