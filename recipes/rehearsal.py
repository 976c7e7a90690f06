"""Continual training with rehearsal: a domain adapter per stage + a shared adapter tuned with replay.

    accelerate launch recipes/rehearsal.py                                  # offline demo (tiny model, demo images shipped in medadapt)
    accelerate launch recipes/rehearsal.py --config recipes/configs/medmnist.yaml
    accelerate launch recipes/rehearsal.py rehearsal.size=50 train.epochs=2 --overwrite
    accelerate launch recipes/rehearsal.py --resume                         # after an interruption

All logic lives in medadapt.training (installed: `medadapt train` or `accelerate launch -m medadapt.train`);
this script only picks the default config and paradigm. Configs: recipes/configs/*.yaml are links to
medadapt/configs/*.yaml, the configs shipped in the package (`--config medmnist` names one).
"""

import sys

from medadapt.configs import DEFAULT_CONFIG
from medadapt.training.cli import main

if __name__ == "__main__":
    sys.exit(main(default_config=DEFAULT_CONFIG, description=__doc__))
