"""Federated continual adapters on Flower: sites keep their data and rehearsal memories; only adapter tensors travel.

Config: :func:`load_federated_config` (a run config plus a ``federation:`` block). Simulation on one
machine: :func:`medadapt.federated.simulation.run_simulation`. Deployment: the Flower apps
``medadapt.federated.server_app:app`` and ``medadapt.federated.client_app:app`` (see README
"Federated training"). The Flower-facing modules need ``pip install "medadapt[federated]"``;
this package's top level imports without Flower.
"""

from .extra import INSTALL_HINT, require_flwr
from .partition import dirichlet_partition
from .settings import AGGREGATIONS, FederatedConfig, FederationSettings, SiteSettings, federated_config_from_dict, load_federated_config

__all__ = [
    "AGGREGATIONS",
    "FederatedConfig",
    "FederationSettings",
    "INSTALL_HINT",
    "SiteSettings",
    "dirichlet_partition",
    "federated_config_from_dict",
    "load_federated_config",
    "require_flwr",
]
