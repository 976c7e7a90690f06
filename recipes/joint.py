"""The `joint` paradigm (see medadapt.training.paradigms); same options as recipes/rehearsal.py.

    accelerate launch recipes/joint.py [--config recipes/configs/<name>.yaml] [key=value ...]
"""

import sys

from medadapt.configs import DEFAULT_CONFIG
from medadapt.training.cli import main

if __name__ == "__main__":
    sys.exit(main(default_config=DEFAULT_CONFIG, paradigm="joint", description=__doc__))
