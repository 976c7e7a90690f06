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
