"""Federated continual training, simulated on one machine: every site of `federation.sites` is its own
Flower ClientApp; only adapter tensors travel; each site keeps its data and rehearsal memory.

    python recipes/federated.py --config recipes/configs/federated.yaml
    python recipes/federated.py --config recipes/configs/federated.yaml federation.aggregation=ffa_lora output_dir=runs/fed_exact
    python recipes/federated.py --config recipes/configs/federated.yaml --runtime loopback   # Flower's deployment runtime on 127.0.0.1

Outputs in output_dir: results.json, accuracy_matrix.png, report.md and a medadapt save (manifest +
stage folders). Restarting the same command resumes after the last completed round.
Needs `pip install "medadapt[federated]"`. Deployment (SuperLink + SuperNodes): README "Federated training".
"""

import sys
from pathlib import Path

from medadapt.federated.cli import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).parent / "configs" / "federated.yaml", description=__doc__))
