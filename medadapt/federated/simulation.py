"""One-machine simulation: every site of ``federation.sites`` as its own ``ClientApp`` in this process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .extra import require_flwr

require_flwr()

from flwr.app import Context, RecordDict  # noqa: E402

from . import client_app  # noqa: E402
from .local_grid import LocalGrid, Mod  # noqa: E402
from .server_loop import FederatedServer  # noqa: E402
from .settings import FederatedConfig  # noqa: E402

FIRST_NODE = 1001


def site_state_root(config: FederatedConfig) -> Path:
    """Where simulated sites keep their rehearsal memories: beside output_dir, never inside the model save."""
    out = Path(config.run.output_dir)
    return out.parent / f"{out.name}.sites"


def simulation_grid(config: FederatedConfig, mods: dict[str, list[Mod]] | None = None, state_root: str | Path | None = None) -> LocalGrid:
    """A :class:`LocalGrid` with one node per site (``mods``: extra Flower mods per site name, e.g. in tests)."""
    token = client_app.provide_config(config)
    root = Path(state_root) if state_root is not None else site_state_root(config)
    nodes = {}
    for i, site in enumerate(config.federation.sites):
        node = FIRST_NODE + i
        context = Context(run_id=1, node_id=node, node_config={"site": site.name, "config": token, "state-dir": str(root / site.name)}, state=RecordDict(), run_config={})
        nodes[node] = (client_app.app, context, list((mods or {}).get(site.name, [])))
    return LocalGrid(nodes)


def run_simulation(config: FederatedConfig, mods: dict[str, list[Mod]] | None = None, grid: LocalGrid | None = None) -> dict[str, Any]:
    """Run ``config`` with every site simulated in this process; returns the results (also written to output_dir)."""
    try:
        return FederatedServer(config, grid or simulation_grid(config, mods)).run()
    finally:
        client_app.forget_sites()
