"""Train from an installed medadapt, one process or many through Accelerate:

    accelerate launch -m medadapt.train                                 # offline demo (config `demo`)
    accelerate launch -m medadapt.train --config medmnist rehearsal.size=100
    accelerate launch --multi_gpu --num_processes 2 -m medadapt.train --config my_run.yaml
    python -m medadapt.train --config synthetic train.epochs=1          # one process, no launcher

The same run as ``medadapt train`` (see ``medadapt train --help``) and as the checkout's
``recipes/rehearsal.py``. ``--config`` takes a YAML file or the name of a config shipped in medadapt
(``medadapt config show NAME`` prints one with every key explained). On a bad run the main process
prints one ``error: ...`` line and every process exits with status 2.
"""

from __future__ import annotations

import sys

from .configs import DEFAULT_CONFIG
from .training.cli import main as run_main

__all__ = ["main"]


def main(argv: list[str] | None = None, paradigm: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), train and print the results; returns the exit status."""
    return run_main(argv, default_config=DEFAULT_CONFIG, paradigm=paradigm, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
