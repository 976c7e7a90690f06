"""The run configs shipped inside medadapt (``demo``, ``synthetic``, ``medmnist``, ``vqa_rad``).

``medadapt train --config demo`` (or ``accelerate launch -m medadapt.train --config demo``) reads
``medadapt/configs/demo.yaml`` from the installed package; a path to any YAML file works too. From a
checkout, ``recipes/configs/<name>.yaml`` are links to these same files.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "config_names", "packaged_config", "resolve_config"]

#: The config a run uses when none is given: the offline demo on real images shipped in the package.
DEFAULT_CONFIG = "demo"
_HERE = Path(__file__).resolve().parent


def config_names() -> list[str]:
    """Names of the configs shipped in the package, e.g. ``["demo", "medmnist", "synthetic", "vqa_rad"]``."""
    return sorted(p.stem for p in _HERE.glob("*.yaml"))


def packaged_config(name: str) -> Path:
    """The file of the shipped config ``name`` (with or without ``.yaml``); a ConfigError lists the names."""
    stem = name[:-5] if name.endswith(".yaml") else name
    path = _HERE / f"{stem}.yaml"
    if stem not in config_names():
        raise ConfigError(f"no config named {name!r} in medadapt; shipped configs: {config_names()} (or give a path to a YAML file).")
    return path


def resolve_config(name_or_path: str | Path) -> Path:
    """``name_or_path`` as a config file: an existing file path, else the shipped config of that name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    text = str(name_or_path)
    if "/" in text or "\\" in text or (text.endswith((".yaml", ".yml")) and text[:-5] not in config_names()):
        raise ConfigError(f"config file {text} not found (shipped configs, usable by name: {config_names()}).")
    return packaged_config(text)
