"""medadapt's Flower ``ServerApp`` (deployment: ``flwr run`` against a SuperLink).

Run config keys (``[tool.flwr.app.config]`` or ``flwr run ... --run-config``): ``config`` (the
federated run config YAML on the SuperLink's machine) and ``overrides`` (space-separated
``key=value`` items, e.g. ``"output_dir=/srv/runs/fed federation.rounds_per_stage=2"``).
"""

from __future__ import annotations

import shlex

from .extra import require_flwr

require_flwr()

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from .server_loop import FederatedServer  # noqa: E402
from .settings import load_federated_config  # noqa: E402

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Load the run config named by the run config's ``config`` and run the federation over ``grid``."""
    path = context.run_config.get("config")
    if not path:
        raise ConfigError("the Flower run config must name the federated run config: --run-config \"config='/path/fed.yaml'\".")
    overrides = shlex.split(str(context.run_config.get("overrides", "") or ""))
    FederatedServer(load_federated_config(str(path), overrides), grid).run()
