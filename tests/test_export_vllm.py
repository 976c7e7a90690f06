"""vLLM export: one standalone peft folder per generative stage, and vLLM's own rules, encoded here.

vLLM cannot be installed usefully on these machines (it needs a CUDA build), so this test encodes the
rules its LoRA loader applies, each with a link to the source lines that state it:

* DoRA and ``modules_to_save`` are refused: ``PEFTHelper._validate_features``,
  https://github.com/vllm-project/vllm/blob/e745bafffc44744aa601169f8c6f325e47ca7cd5/vllm/lora/peft_helper.py#L45-L54
* a rank above ``--max-lora-rank`` and a bias (without bias support) are refused: ``PEFTHelper.validate_legal``,
  https://github.com/vllm-project/vllm/blob/e745bafffc44744aa601169f8c6f325e47ca7cd5/vllm/lora/peft_helper.py#L122-L136
* one ``r`` and ``lora_alpha`` per adapter (``vllm_lora_scaling_factor = lora_alpha / r``), so per-module
  ``rank_pattern`` / ``alpha_pattern`` are not read: ``PEFTHelper.__post_init__``, same file, #L56-L67
* on multimodal models, LoRA weights of the vision tower and the connector (projector) are filtered
  out, with a warning only: ``LoRAModelManager._filter_unsupported_mm_module`` in
  https://github.com/vllm-project/vllm/blob/main/vllm/lora/models.py (moved to ``vllm/lora/model_manager.py``
  in later versions) and the "only supports adding LoRA to language model" warning of ``load_lora_model``
  in https://github.com/vllm-project/vllm/blob/main/vllm/v1/worker/lora_model_runner_mixin.py
* ``--max-lora-rank`` takes one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (``LoRAConfig.max_lora_rank``,
  vllm/config/lora.py), default 16.
* the served folder is what ``--lora-modules name=path`` takes: ``adapter_config.json`` +
  ``adapter_model.safetensors`` with peft's ``base_model.model.<module>.lora_A.weight`` keys
  (``LoRAModel.from_local_checkpoint``).
"""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file

from medadapt import AdapterError, ContinualVLM
from medadapt.cli import main as cli_main
from medadapt.export.vllm import STATE_PREFIX, VLLM_MAX_LORA_RANKS, export_vllm, stage_problems
from medadapt.tiny import tiny_base
from tests.conftest import build_tiny_vlm
from tests.test_concurrent_serving import _llava

pytestmark = pytest.mark.usefixtures("core_single_thread")

LM = "model.language_model"


def _keys(*modules: str) -> list[str]:
    return [f"{STATE_PREFIX}{m}.lora_{ab}.weight" for m in modules for ab in "AB"]


def _config(**changes) -> dict:
    return {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "bias": "none", **changes}


@pytest.mark.parametrize("changes, reason", [
    ({"use_dora": True}, "DoRA"),  # _validate_features
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),  # _validate_features
    ({"r": 32}, "above --max-lora-rank 16"),  # validate_legal
    ({"bias": "all"}, "biases"),  # validate_legal
    ({"lora_bias": True}, "biases"),
    ({"rank_pattern": {"q_proj": 4}}, "rank_pattern"),  # __post_init__: one scaling per adapter
    ({"peft_type": "IA3"}, "not a LoRA"),
])
def test_vllm_rules_refuse_what_its_loader_refuses(changes, reason):
    problems, outside = stage_problems("s", _config(**changes), _keys(f"{LM}.layers.0.self_attn.q_proj"), LM, 16)
    assert len(problems) == 1 and reason in problems[0] and outside == []
    assert stage_problems("s", _config(), _keys(f"{LM}.layers.0.self_attn.q_proj"), LM, 16) == ([], [])


def test_lora_outside_the_language_model_is_found():
    """vLLM filters tower and connector modules out of a multimodal LoRA: they are reported, never kept silently."""
    keys = _keys(f"{LM}.layers.0.self_attn.q_proj", "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",
                 "model.multi_modal_projector.linear_1")
    problems, outside = stage_problems("s", _config(), keys, LM, 16)
    assert problems == []
    assert outside == ["model.multi_modal_projector.linear_1", "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"]


def test_export_writes_one_peft_folder_per_stage_and_the_serve_command(tmp_path, capsys):
    model = _llava()
    model.save_pretrained(tmp_path / "save")
    assert cli_main(["export", "vllm", str(tmp_path / "save"), str(tmp_path / "vllm")]) == 0
    printed = capsys.readouterr().out
    command = printed.strip().splitlines()[-1]
    argv = shlex.split(command)
    base = str((tmp_path / "save" / "base").resolve())  # the tiny base was built in memory: saved in the folder
    assert argv[:3] == ["vllm", "serve", base] and "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "16"
    modules = argv[argv.index("--lora-modules") + 1:]
    assert modules == [f"cxr={(tmp_path / 'vllm' / 'cxr').resolve()}", f"organ={(tmp_path / 'vllm' / 'organ').resolve()}"]
    assert (tmp_path / "vllm" / "vllm_serve.txt").read_text().strip() == command
    for name in ("cxr", "organ"):
        folder = tmp_path / "vllm" / name
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == base and config["r"] == 4
        tensors = load_file(str(folder / "adapter_model.safetensors"))
        assert tensors and all(k.startswith(f"{STATE_PREFIX}{LM}.") and k.endswith(("lora_A.weight", "lora_B.weight")) for k in tensors)
        assert all(torch.equal(v, model.adapter_state_dict(name)[k]) for k, v in tensors.items())
    # each folder is a standalone peft adapter: plain peft on the base gives medadapt's outputs
    base_model = tiny_base("tiny-llava").model
    peft_model = PeftModel.from_pretrained(base_model, str(tmp_path / "vllm" / "cxr")).eval()
    ids = torch.randint(5, 50, (1, 6))
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits
        with model.adapters.active("cxr"):
            want = model.base_model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_vision_lora_dora_and_rank_are_refused_before_writing(tmp_path):
    model = ContinualVLM(tiny_base("tiny-llava"))
    torch.manual_seed(0)
    model.add_domain("everywhere", ["no", "yes"], "Is it? {}", adapter=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.add_domain("dora", ["no", "yes"], "Is it? {}", adapter=LoraConfig(r=4, lora_alpha=8, target_modules=rf"^{LM}\..*\.q_proj$", use_dora=True))
    model.add_domain("wide", ["no", "yes"], "Is it? {}", adapter=LoraConfig(r=32, lora_alpha=32, target_modules=rf"^{LM}\..*\.q_proj$"))
    model.save_pretrained(tmp_path / "save")
    with pytest.raises(AdapterError) as info:
        export_vllm(tmp_path / "save", tmp_path / "out")
    text = str(info.value)
    assert "nothing was written" in text and not (tmp_path / "out").exists()
    assert "'everywhere': LoRA on" in text and "vision_tower" in text and "--drop-non-language" in text
    assert "'dora': it uses DoRA" in text and "'wide': its rank r=32 is above --max-lora-rank 16" in text

    result = export_vllm(tmp_path / "save", tmp_path / "out", stages=["everywhere", "wide"], max_lora_rank=32, drop_non_language=True)
    kept = load_file(str(tmp_path / "out" / "everywhere" / "adapter_model.safetensors"))
    assert result.dropped["everywhere"] and all(m.startswith("model.vision_tower.") for m in result.dropped["everywhere"])
    assert kept and all(k.startswith(f"{STATE_PREFIX}{LM}.") for k in kept)
    assert "--max-lora-rank 32" in result.command() and "dora=" not in result.command()
    with pytest.raises(AdapterError, match="not a value vLLM accepts"):
        export_vllm(tmp_path / "save", tmp_path / "x", max_lora_rank=24)
    assert 24 not in VLLM_MAX_LORA_RANKS


def test_a_dual_encoder_save_names_export_merged(tmp_path, capsys):
    build_tiny_vlm("clip").save_pretrained(tmp_path / "clip")
    assert cli_main(["export", "vllm", str(tmp_path / "clip"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dual-encoder" in err and "export_merged" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
