"""Model cards rendered from hub_cards/ templates: front matter, body, results, and never clobbering a user's card."""

from __future__ import annotations

import json
import logging
import math
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, declared in the test extra for python_version < "3.11"
    import tomli as tomllib
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig

import medadapt
from medadapt import ContinualVLM, PromptConfig
from medadapt.hub.card import is_medadapt_card, render_card, template_path
from medadapt.saves.io import save_model
from medadapt.tiny import tiny_backbone
from tests.hub_server import fake_hub  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {
    "paradigm": "lora-per-domain",
    "domains": ["chest", "derm"],
    "stages": ["chest", "derm"],
    "accuracy_matrix": [[0.8125, math.nan], [0.75, 0.9]],
    "final_metrics": {"chest": {"accuracy": 0.75, "auroc": 0.8}, "derm": {"accuracy": 0.9, "auroc": 0.95}},
}


def lora() -> LoraConfig:
    return LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def build() -> ContinualVLM:
    torch.manual_seed(0)
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.", adapter=lora(),
                     metadata={"dataset": "medadapt-test/chest-xrays"})
    model.add_domain("derm", ["benign", "malignant | unsure"], "a skin photo of {}.", adapter=PromptConfig(), seed=1)
    model.add_shared_adapter("generalist", lora())
    return model


@pytest.fixture
def manifest(tmp_path) -> dict:
    """The manifest of :func:`build` as if its base were the Hub model openai/clip-vit-base-patch32."""
    manifest = save_model(build().parts(), tmp_path / "save")
    manifest["base"].update(source="openai/clip-vit-base-patch32", revision="a" * 40, saved_in=None, files={})
    return manifest


def body(card: ModelCard) -> str:
    return card.text


def test_front_matter(manifest):
    card = ModelCard(str(render_card(manifest, "org/chest-derm", results=RESULTS)))  # reparsed from text
    data = card.data
    assert data.base_model == "openai/clip-vit-base-patch32"
    assert data.library_name == "medadapt"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert {"medical", "continual-learning", "lora", "prompt", "peft", "medadapt", "clip"} <= set(data.tags)
    assert data.datasets == ["medadapt-test/chest-xrays"]
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    # auroc is filed under the Hub metric id roc_auc (issue 20)
    assert results == {("chest", "accuracy"): 0.75, ("chest", "roc_auc"): 0.8, ("derm", "accuracy"): 0.9, ("derm", "roc_auc"): 0.95}
    assert data.to_dict()["base_model_relation"] == "adapter"
    assert {r.dataset_type for r in data.eval_results if r.dataset_name == "chest"} == {"medadapt-test/chest-xrays"}
    assert data.model_name == "chest-derm"


def test_body_lists_stages_in_order_with_labels_prompts_usage_and_limitations(manifest):
    text = body(render_card(manifest, "org/chest-derm", results=RESULTS, revision="v1"))
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| `", line)]
    assert [re.search(r"`(\w+)`", r).group(1) for r in rows] == ["chest", "derm", "generalist"]
    assert "| 1 | `chest` | domain | lora | normal, pneumonia | `a chest x-ray showing {}.` |" in rows[0]
    assert "malignant \\| unsure" in rows[1] and "| prompt |" in rows[1]
    assert "| 3 | `generalist` | shared | lora | – | – |" in rows[2]
    assert "Not for clinical use" in text and "Intended use" in text
    assert 'ContinualVLM.from_pretrained("org/chest-derm", revision="v1")' in text
    assert 'AutoModel.from_pretrained("openai/clip-vit-base-patch32", revision="' + "a" * 40 + '")' in text
    assert 'PeftModel.from_pretrained(base, "org/chest-derm", subfolder="chest", revision="v1")' in text
    assert "Prompt-adapter stages" in text
    # accuracy matrix with a not-evaluated cell, and the continual summary
    assert "| After stage | chest | derm |" in text
    assert "| 1. chest | 0.812 | – |" in text and "| 2. derm | 0.750 | 0.900 |" in text
    assert "average accuracy" in text and "lora-per-domain" in text
    assert is_medadapt_card(str(render_card(manifest, "org/x")))


def test_card_without_results_and_with_base_in_repo(tmp_path):
    manifest = save_model(build().parts(), tmp_path / "save")  # tiny base: built in memory, saved in base/
    card = render_card(manifest, "org/tiny")
    assert card.data.base_model is None and card.data.eval_results is None  # not a real Hub model
    assert "## Results" not in card.text
    assert 'AutoModel.from_pretrained("org/tiny", subfolder="base", revision="main")' in card.text
    assert str(tmp_path) not in str(card)


def test_results_from_json_file_and_from_extras(manifest, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    assert "| 2. derm | 0.750 | 0.900 |" in render_card(manifest, "org/x", results=path).text
    with_extras = {**manifest, "extras": {"results": {"metrics": {"chest": {"accuracy": 0.5}}}}}
    text = render_card(with_extras, "org/x").text
    assert "| Domain | accuracy |" in text and "| chest | 0.500 |" in text


def test_prompt_only_repo_and_hub_provenance(tmp_path):
    model = ContinualVLM(tiny_backbone("clip"))
    model.add_domain("fundus", ["healthy", "sick"], "a fundus image of {}.", adapter=PromptConfig(), seed=0)
    model.provenance["fundus"] = {"repo": "org-b/stages", "revision": "b" * 40, "adapter": "retina"}
    manifest = save_model(model.parts(), tmp_path / "save")
    text = render_card(manifest, "org/fundus").text
    assert "prompt adapters only" in text and "PeftModel" not in text
    assert "`fundus`: `org-b/stages` at revision `" + "b" * 40 + "` (stage `retina` there)" in text


def test_templates_ship_inside_the_package():
    path = template_path()
    assert path.is_file() and path.name == "medadapt_card.md"
    packaged = Path(medadapt.__file__).parent / "hub_cards" / "medadapt_card.md"
    assert packaged.is_file() and packaged.read_bytes() == (ROOT / "hub_cards" / "medadapt_card.md").read_bytes()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "hub_cards/*.md" in pyproject["tool"]["setuptools"]["package-data"]["medadapt"]


def test_pushed_card_and_a_user_card_is_not_overwritten(fake_hub, caplog):  # noqa: F811
    repo = "medadapt-test/cards"
    model = build()
    model.extras["results"] = RESULTS
    model.push_to_hub(repo, domains=["chest"])
    readme = fake_hub.files(repo)["README.md"].decode()
    assert is_medadapt_card(readme) and "| 1. chest | 0.812 | – |" in readme
    assert ModelCard(readme).data.base_model is None

    fake_hub.put_file(repo, "README.md", b"# My own card\n\nHand-written.\n")
    with caplog.at_level(logging.WARNING):
        model.push_to_hub(repo, domains=["derm"])
    assert "overwrite_card=True" in caplog.text
    assert fake_hub.files(repo)["README.md"] == b"# My own card\n\nHand-written.\n"
    assert "README.md" not in fake_hub.commits(repo)[-1]["paths"]
    assert "derm/prompt_config.json" in fake_hub.commits(repo)[-1]["paths"]

    model.push_to_hub(repo, domains=["generalist"], overwrite_card=True)
    readme = fake_hub.files(repo)["README.md"].decode()
    assert is_medadapt_card(readme)
    assert [m for m in re.findall(r"\| \d+ \| `(\w+)`", readme)] == ["chest", "derm", "generalist"]


def test_card_peft_snippet_loads_a_stage_with_plain_transformers_and_peft(fake_hub):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModel

    repo = "medadapt-test/peft-snippet"
    model = build()
    model.push_to_hub(repo)
    readme = fake_hub.files(repo)["README.md"].decode()
    assert f'AutoModel.from_pretrained("{repo}", subfolder="base", revision="main")' in readme
    assert f'PeftModel.from_pretrained(base, "{repo}", subfolder="chest", revision="main")' in readme
    base = AutoModel.from_pretrained(repo, subfolder="base", revision="main")
    peft_model = PeftModel.from_pretrained(base, repo, subfolder="chest", revision="main").eval()
    images = [torch.rand(32, 32, 3).numpy() for _ in range(2)]
    with torch.no_grad():
        out = peft_model.get_image_features(pixel_values=model.preprocess(images))
    feats = getattr(out, "pooler_output", out)
    expected = model.embed_images(images, adapter="chest")
    assert torch.allclose(torch.nn.functional.normalize(feats, dim=-1), expected, atol=1e-5)
    assert not torch.allclose(model.embed_images(images, adapter="base"), expected, atol=1e-3)  # the LoRA matters
