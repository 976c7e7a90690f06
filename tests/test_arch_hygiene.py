"""Package hygiene (issue 16): errors go through MedAdaptError, one list of tiny model names, one resolver."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from medadapt.errors import AdapterError
from medadapt.stages import Served

PACKAGE = Path(__file__).resolve().parents[1] / "medadapt"
# builtins a container or iterator protocol requires (Dataset.__getitem__, Mapping.__getitem__)
PROTOCOL = {"IndexError", "KeyError", "StopIteration", "NotImplementedError"}
BUILTIN_ERRORS = {name for name in dir(builtins) if name.endswith("Error") or name == "Exception"}


def bare_builtin_raises(source: str) -> list[int]:
    """Line numbers of ``raise X(...)`` / ``raise X`` where X is a builtin exception (protocol ones aside)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in BUILTIN_ERRORS and target.id not in PROTOCOL:
                lines.append(node.lineno)
    return lines


def test_every_raise_goes_through_the_medadapt_error_hierarchy():
    assert bare_builtin_raises("def f():\n    raise ValueError('x')\n") == [2]  # the scan can fail
    assert bare_builtin_raises("def f():\n    raise AdapterError('x')\n") == []
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}" for p in PACKAGE.rglob("*.py") for n in bare_builtin_raises(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_show_accepts_every_built_in_tiny_model():
    from medadapt.cli import image_processor_for
    from medadapt.tiny import tiny_names

    assert "tiny-llava" in tiny_names()
    processor = image_processor_for("tiny-llava")
    assert callable(processor)


def test_served_is_a_hashable_value_and_the_table_is_the_one_resolver(tiny_clip):
    assert tiny_clip.serve("chest") == Served(("chest",)) and hash(tiny_clip.serve("chest")) == hash(Served(("chest",)))
    assert tiny_clip.serve("derm") == Served((), "derm")  # a prompt adapter does not stack
    assert tiny_clip.serve("knee").is_base and tiny_clip.serve("chest", "base").is_base
    assert tiny_clip.serve("chest", ["chest", "generalist", "derm"]) == Served(("chest", "generalist"), "derm")
    with pytest.raises(AdapterError, match="unknown adapter 'knee'"):  # a domain without an adapter serves nothing
        tiny_clip.serve("chest", "knee")
    with pytest.raises(AdapterError, match="at most one prompt adapter"):
        tiny_clip.serve("chest", ["derm", "fundus"])


def test_services_take_parts_and_adapters_never_import_families():
    from .test_families import _import_graph

    graph = _import_graph()
    for service in ("medadapt.routing", "medadapt.merging", "medadapt.saves.io", "medadapt.hub.push", "medadapt.hub.pull", "medadapt.stages"):
        assert "medadapt.model" not in graph[service], service  # type-only imports count too
    for module, targets in graph.items():
        if module.startswith("medadapt.adapters"):
            assert not any(t.startswith("medadapt.families") for t in targets), (module, targets)
    assert "medadapt.backbones" not in {t for m, ts in graph.items() if m.startswith("medadapt.families") for t in ts}


def test_the_save_format_never_reaches_into_the_hub_client():
    from .test_families import _import_graph

    graph = _import_graph()
    saves = {m: ts for m, ts in graph.items() if m.startswith("medadapt.saves")}
    assert {"medadapt.saves.io", "medadapt.saves.manifest", "medadapt.saves.transaction"} <= set(saves)
    assert not {(m, t) for m, ts in saves.items() for t in ts if t.startswith("medadapt.hub")}
    assert "medadapt.saves.manifest" in graph["medadapt.hub.pull"]  # the client builds on the format


def test_stage_table_manifest_round_trip(tiny_clip):
    from medadapt.stages import StageTable

    sections = tiny_clip.stages.to_manifest()
    assert sections["stage_order"] == tiny_clip.stage_order
    restored = StageTable.from_manifest(sections)
    assert restored.order == tiny_clip.stage_order and restored.shared == tiny_clip.shared
    assert {n: d.to_dict() for n, d in restored.domains.items()} == {n: d.to_dict() for n, d in tiny_clip.domains.items()}
    assert restored.serve("knee").is_base and restored.serve("derm").prompt == "derm"


def test_training_and_evaluation_resolve_adapters_through_the_table(tiny_clip):
    import torch

    from medadapt.training.evaluate import predict_split
    from medadapt.training.objectives import Batch, build_objective

    batch = Batch(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]), ["chest", "chest"])
    with pytest.raises(AdapterError, match="unknown adapter 'nope'"):
        build_objective("classification")(tiny_clip, batch, "nope")
    loss, report = build_objective("classification")(tiny_clip, batch, "chest")
    assert loss.requires_grad is False and 0.0 <= report["acc"] <= 1.0  # nothing trainable: no graph

    class Store:  # the two PixelStore calls predict_split makes
        def labels(self, domain, split):
            import numpy as np

            return np.array([0, 1])

        def questions(self, domain, split, chunk):
            return None

        def pixels(self, domain, split, chunk):
            return torch.zeros(len(chunk), 3, 32, 32)

    with pytest.raises(AdapterError, match="at most one prompt adapter"):
        predict_split(tiny_clip, Store(), "chest", ("derm", "fundus"), batch_size=2)
    probs, _ = predict_split(tiny_clip, Store(), "chest", ("chest", "generalist"), batch_size=2)
    assert probs.shape == (2, 3)
