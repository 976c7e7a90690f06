"""Hub-conventional card metadata (issue 20): base_model + base_model_relation, library_name, pipeline_tag,
licence carried over or given, task types per metric, open_clip bases; and the fake Hub's validate-yaml
endpoint applying huggingface_hub's own metadata parsing and the Hub's field rules, so a bad card fails."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard

from medadapt.errors import HubError
from medadapt.hub.card import LIBRARY_NAME, base_license, hub_base_id, render_card
from tests.hub_server import fake_hub, validate_card_yaml  # noqa: F401  (pytest fixture)
from tests.test_model_card import RESULTS, build, manifest  # noqa: F401  (fixture)

VQA_RESULTS = {"final_metrics": {"chest": {"accuracy": 0.7, "auroc": 0.8},
                                 "derm": {"accuracy": 0.41, "exact_match": 0.2, "token_f1": 0.5, "bleu1": 0.33, "auroc": float("nan")}}}


def front(card: ModelCard) -> dict:
    return yaml.safe_load(str(card).split("---")[1])


def evals(card: ModelCard) -> dict:
    return {(e.dataset_name, e.metric_type): e for e in card.data.eval_results}


def test_adapter_repo_front_matter_follows_hub_conventions(manifest):  # noqa: F811
    card = render_card(manifest, "org/cxr", results=RESULTS)
    data = front(card)
    assert data["base_model"] == "openai/clip-vit-base-patch32"
    assert data["base_model_relation"] == "adapter"
    assert data["library_name"] == LIBRARY_NAME == "medadapt"  # why not peft: medadapt/hub/card.py docstring
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert "license" not in data  # none given and none read here
    found = evals(card)
    assert found[("chest", "accuracy")].task_type == "image-classification"
    assert found[("chest", "roc_auc")].metric_value == pytest.approx(0.8)
    assert validate_card_yaml(str(card)) == []


def test_vqa_metrics_are_filed_as_visual_question_answering(manifest):  # noqa: F811
    generative = copy.deepcopy(manifest)
    generative["base"].update(family="image-text-to-text", model_type="llava", source="org/llava-med")
    for domain in generative["domains"]:
        if domain["name"] == "derm":
            domain["task"] = "vqa"
    card = render_card(generative, "org/vqa", results=VQA_RESULTS)
    found = evals(card)
    assert {e.task_type for e in card.data.eval_results} == {"visual-question-answering"}  # never image-classification
    assert found[("derm", "recall")].metric_value == pytest.approx(0.41)  # a vqa domain's "accuracy" is token recall
    assert found[("derm", "bleu")].metric_name == "BLEU-1" and found[("derm", "f1")].metric_value == pytest.approx(0.5)
    assert ("derm", "accuracy") not in found and ("derm", "roc_auc") not in found  # NaN auroc left out
    assert found[("chest", "accuracy")].task_type == "visual-question-answering"  # closed questions of a generative base
    assert front(card)["pipeline_tag"] == "image-text-to-text"
    assert validate_card_yaml(str(card)) == []


def test_open_clip_hf_hub_base_maps_to_its_repo(manifest):  # noqa: F811
    biomed = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert hub_base_id({"source": f"hf-hub:{biomed}"}) == biomed
    assert hub_base_id({"source": "medadapt/tiny-clip"}) is None and hub_base_id({"source": "/no/such/folder"}) is None
    clip = copy.deepcopy(manifest)
    clip["base"].update(source=f"hf-hub:{biomed}", family="open_clip", model_type="open_clip")
    data = front(render_card(clip, "org/biomed"))
    assert data["base_model"] == biomed and data["base_model_relation"] == "adapter"


def test_licence_explicit_or_carried_from_the_base(manifest, fake_hub):  # noqa: F811
    assert front(render_card(manifest, "org/x", license="apache-2.0"))["license"] == "apache-2.0"
    terms = {"license": "other", "license_name": "health-ai-developer-foundations",
             "license_link": "https://developers.google.com/health-ai-developer-foundations/terms"}
    data = front(render_card(manifest, "org/x", license=terms))
    assert {k: data[k] for k in terms} == terms
    # a base on the (fake) Hub whose own card carries gated terms: they are read back from its card
    api = HfApi()
    api.create_repo("google/medgemma-fake")
    readme = "---\n" + yaml.safe_dump(terms) + "---\n# base\n"
    api.upload_file(path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="google/medgemma-fake")
    assert base_license("google/medgemma-fake") == terms
    assert base_license("google/no-such-model") is None and base_license(None) is None


def post_validate(text: str):
    """POST raw card text to the (fake) Hub's validate-yaml, as ModelCard.validate does (it would re-dump a parsed card)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    return get_session().post(f"{constants.ENDPOINT}/api/validate-yaml", json={"repoType": "model", "content": text})


@pytest.mark.parametrize("bad, reason", [
    ({"license": "apache"}, "not a Hub licence id"),
    ({"license": "other"}, "license_name and license_link"),
    ({"base_model": "hf-hub:org/name"}, "not a Hub model id"),
    ({"base_model": None, "base_model_relation": "adapter"}, "needs a base_model"),
    ({"base_model_relation": "lora"}, "must be one of"),
    ({"pipeline_tag": "vqa"}, "not a Hub task"),
    ({"tags": ["ok", 3]}, "list of strings"),
])
def test_fake_hub_refuses_bad_metadata(manifest, fake_hub, bad, reason):  # noqa: F811
    card = render_card(manifest, "org/x", results=RESULTS)
    assert post_validate(str(card)).status_code == 200  # the rendered card passes the Hub's rules
    data = {**front(card), **bad}
    bad_card = "---\n" + yaml.safe_dump({k: v for k, v in data.items() if v is not None}) + "---\n" + card.text
    answer = post_validate(bad_card)
    assert answer.status_code == 400 and re.search(reason, answer.text), answer.text
    assert fake_hub.validated[-1] == bad_card


def test_fake_hub_refuses_a_malformed_model_index(fake_hub):  # noqa: F811
    no_dataset = "---\nmodel-index:\n- name: x\n  results:\n  - task: {type: image-classification}\n    metrics: [{type: accuracy, value: 0.5}]\n---\n"
    answer = post_validate(no_dataset)
    assert answer.status_code == 400 and "ModelCardData/EvalResult refused" in answer.text  # huggingface_hub's own parser
    wrong_task = "---\nmodel-index:\n- name: x\n  results:\n  - task: {type: vqa}\n    dataset: {type: d, name: d}\n    metrics: [{type: recall, value: 0.5}]\n---\n"
    answer = post_validate(wrong_task)
    assert answer.status_code == 400 and "task type 'vqa' is not a Hub task" in answer.text
    good = wrong_task.replace("type: vqa", "type: visual-question-answering")
    assert post_validate(good).status_code == 200


def test_push_validates_the_card_and_refuses_a_bad_licence(fake_hub):  # noqa: F811
    model = build()
    model.push_to_hub("org/cards", license="apache-2.0")
    pushed = fake_hub.validated[-1]
    assert "base_model_relation" not in pushed or "base_model:" in pushed  # tiny base: no Hub base to relate to
    assert "license: apache-2.0" in pushed
    with pytest.raises(HubError, match="does not pass the Hub's validation.*not a Hub licence id"):
        model.push_to_hub("org/cards2", license="Apache 2")
