"""``python recipes/federated.py --config ...``: a federated run simulated on one machine."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import MedAdaptError


def main(argv: list[str] | None = None, default_config: str | Path | None = None, description: str = "") -> int:
    """Parse arguments, run the simulation, print ACC/BWT; returns the exit status."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=str, default=str(default_config) if default_config else None, help="run config YAML with a federation: block")
    parser.add_argument("--runtime", choices=("inprocess", "loopback"), default="inprocess",
                        help="inprocess: every site a ClientApp in this process (seconds to start); loopback: Flower's deployment runtime on "
                             "this machine, a SuperLink and one SuperNode per site as processes on 127.0.0.1 and `flwr run`")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. federation.rounds_per_stage=2 output_dir=runs/x")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints its own INFO lines; its DEBUG (every SecAgg+ stage) stays out
    try:
        from .extra import require_flwr
        from .settings import load_federated_config

        require_flwr()
        if not args.config:
            raise MedAdaptError("give --config (a run config with a federation: block).")
        if args.runtime == "loopback":
            from .loopback import LoopbackFederation

            federation = LoopbackFederation(args.config, args.overrides, echo=print)  # checks the config before any process starts
            output_dir = str(federation.output_dir)
            results = federation.run()
        else:
            from .simulation import run_simulation

            config = load_federated_config(args.config, args.overrides)
            output_dir = config.run.output_dir
            results = run_simulation(config)
    except MedAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: results[k] for k in ("acc", "bwt", "forgetting", "wall_time_s")}
    summary["rounds"] = results["federation"]["completed_rounds"]
    print(json.dumps(summary, indent=1))
    print(f"outputs in {output_dir}")
    return 0
