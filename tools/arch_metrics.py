"""Architecture measurements for issue 16: import circles, floors, the walk of ``domain`` through
``predict_proba``, and the largest files.

Run from the repository root: ``PYTHONPATH=$PWD python tools/arch_metrics.py``.

* **graph**: every ``import`` of a medadapt module anywhere in a file (functions and
  ``if TYPE_CHECKING`` blocks included: a type-only import is still a tie); a package's
  ``__init__`` importing its submodules counts too. ``from pkg import sub`` is an edge to the
  submodule ``pkg.sub``; ``from pkg import name`` (a name defined in ``pkg/__init__``) an edge to ``pkg``.
* **circles**: strongly connected components of that graph with more than one module.
* **floors**: from the *runtime* graph (TYPE_CHECKING blocks left out, circles condensed): a module
  importing nothing from medadapt is floor 0, every other one sits one floor above the highest it imports.
* **walk**: ``model.predict_proba(images, domain=D)`` on a tiny CLIP is traced; a medadapt call is
  followed when one of its arguments is, or holds, the domain name or its ``Domain`` (or a value the
  table derived from it). **rooms**: distinct modules entered; **stays**: maximal runs of followed calls
  in one module; **climbs**: followed calls into a module on a higher floor than the caller's.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medadapt"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports(path: Path, module: str, typing: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    MODULES = _modules()

    def visit(node: ast.AST) -> None:
        if not typing and isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("medadapt"):
                names = [f"{target}.{a.name}" for a in node.names]
                subs = [n for n in names if n in MODULES]
                found.update(subs)  # `from . import hub` imports the submodule
                if len(subs) < len(names):  # names defined in the module (or package __init__) itself
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("medadapt"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph(typing: bool) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imports(path, name, typing):
            while target and target not in modules:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                targets.add(target)
        out[name] = targets
    return out


def components(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return out


def floors(g: dict[str, set[str]]) -> dict[str, int]:
    comps = components(g)
    comp_of = {m: i for i, c in enumerate(comps) for m in c}
    floor: dict[int, int] = {}
    for i, comp in enumerate(comps):  # Tarjan emits components in reverse topological order
        deps = {comp_of[t] for m in comp for t in g[m]} - {i}
        floor[i] = 1 + max((floor[d] for d in deps), default=-1)
    return {m: floor[comp_of[m]] for m in g}


def walk(floor: dict[str, int]) -> tuple[list[str], int, int, list[str]]:
    import torch

    from medadapt import ContinualVLM
    from medadapt.domains import Domain
    from medadapt.tiny import tiny_backbone

    model = ContinualVLM(tiny_backbone("clip", seed=0))
    model.add_domain("chest", ["normal", "pneumonia"], "a chest x-ray showing {}.")
    images = [torch.rand(3, 32, 32) for _ in range(2)]
    target = "chest"

    def holds(value: object, depth: int = 0) -> bool:
        if value == target if isinstance(value, str) else False:
            return True
        if isinstance(value, Domain):
            return value.name == target
        if depth < 2 and isinstance(value, (list, tuple, set, frozenset)):
            return any(holds(v, depth + 1) for v in list(value)[:8])
        names = getattr(value, "names", None)  # a Served value
        if depth < 2 and isinstance(names, tuple) and type(value).__name__ == "Served":
            return holds(names, depth + 1)
        return False

    calls: list[tuple[str, str, str]] = []

    def tracer(frame, event, arg):  # noqa: ANN001
        if event != "call":
            return None
        mod = frame.f_globals.get("__name__", "")
        if not mod.startswith("medadapt"):
            return None
        code = frame.f_code
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        if any(holds(a) for a in args):
            caller = frame.f_back
            while caller is not None and not caller.f_globals.get("__name__", "").startswith("medadapt"):
                caller = caller.f_back
            calls.append((caller.f_globals["__name__"] if caller else "", mod, code.co_name))
        return None

    sys.setprofile(None)
    sys.settrace(tracer)
    try:
        model.predict_proba(images, domain=target)
    finally:
        sys.settrace(None)
    rooms = list(dict.fromkeys(m for _, m, _ in calls))
    stays = sum(1 for i, (_, m, _) in enumerate(calls) if i == 0 or calls[i - 1][1] != m)
    climbs = [f"{c} -> {m}.{f}" for c, m, f in calls if c in floor and m in floor and floor[m] > floor[c]]
    return rooms, stays, len(climbs), climbs


def main() -> None:
    full, runtime = graph(typing=True), graph(typing=False)
    circles = [c for c in components(full) if len(c) > 1]
    runtime_circles = [c for c in components(runtime) if len(c) > 1]
    print(f"modules: {len(full)}")
    print(f"circles (all imports, type-only included): {len(circles)}")
    for c in circles:
        print("   ", ", ".join(c))
    print(f"circles (runtime imports only): {len(runtime_circles)}")
    for c in runtime_circles:
        print("   ", ", ".join(c))
    floor = floors(runtime)
    rooms, stays, n_climbs, climbs = walk(floor)
    print(f"walk of domain through predict_proba: rooms {len(rooms)}, stays {stays}, climbs {n_climbs}")
    print("    rooms:", ", ".join(rooms))
    for c in climbs:
        print("    climb:", c)
    sizes = sorted(((len(p.read_text(encoding='utf-8').splitlines()), module_name(p)) for p in PACKAGE.rglob("*.py")), reverse=True)
    print("largest files:", ", ".join(f"{m} {n}" for n, m in sizes[:6]))


if __name__ == "__main__":
    main()
