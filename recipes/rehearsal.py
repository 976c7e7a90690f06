"""Continual training with rehearsal: a domain adapter per stage + a shared adapter tuned with replay.

    accelerate launch recipes/rehearsal.py                                  # offline demo (tiny model, synthetic domains)
    accelerate launch recipes/rehearsal.py --config recipes/configs/medmnist.yaml
    accelerate launch recipes/rehearsal.py rehearsal.size=50 train.epochs=2 --overwrite
    accelerate launch recipes/rehearsal.py --resume                         # after an interruption

All logic lives in medadapt.training; this script only picks the default config and paradigm.
"""

import sys
from pathlib import Path

from medadapt.training.cli import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).parent / "configs" / "demo.yaml", description=__doc__))
