"""``medadapt train`` and ``medadapt config show|init``: the main job from an installed medadapt.

``medadapt train`` runs one process in this process, or ``--num-processes N`` processes through
Accelerate's launcher API (the same code path as ``accelerate launch --multi_gpu``). Either way a bad run
prints only medadapt's one ``error: ...`` line and exits with status 2: the launcher's own report of the
failed child (accelerate re-raises it as ``CalledProcessError``, torchrun as ``ChildFailedError``, each with
a traceback) is caught here and replaced by the child's status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from .._io import atomic_write_bytes, storage_errors
from ..configs import DEFAULT_CONFIG, config_names, resolve_config
from ..errors import ConfigError
from .cli import run_arguments

__all__ = ["add_train_commands", "train_parser", "run_train", "EXIT_ERROR"]

#: The exit status of a run that stopped on a medadapt error (bad config, missing data, ...).
EXIT_ERROR = 2

TRAIN_HELP = """Train: the run described by --config (a YAML file or a shipped config's name), with key=value overrides.

    medadapt train                                         # offline demo: tiny CLIP on three real-image domains
    medadapt train --config medmnist rehearsal.size=100
    medadapt train --config my_run.yaml --num-processes 2  # data parallel (gloo on CPU, NCCL on GPUs)
    accelerate launch -m medadapt.train --config my_run.yaml   # the same, under your accelerate config

A bad run prints one `error: ...` line and exits with status 2.
"""


def launch_arguments() -> argparse.ArgumentParser:
    """The options of ``medadapt train`` that decide how it is launched (not passed to the run)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--num-processes", type=int, default=1,
                        help="processes to train with (data parallel through accelerate's launcher; default 1, in this process)")
    parser.add_argument("--paradigm", default=None, help="override the config's paradigm (specialized, joint, continual, rehearsal)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no launcher messages; errors are still printed")
    return parser


def train_parser(prog: str = "medadapt train") -> argparse.ArgumentParser:
    """The full parser of ``medadapt train`` (run options + launch options)."""
    return argparse.ArgumentParser(prog=prog, description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   parents=[run_arguments(), launch_arguments()])


def _run_argv(args: argparse.Namespace) -> list[str]:
    """The arguments the run itself gets (what ``python -m medadapt.train`` accepts)."""
    argv = ["--config", args.config] if args.config else []
    for flag in ("resume", "resume_anyway", "overwrite"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    if args.no_progress or args.quiet:
        argv.append("--no-progress")
    if args.paradigm:
        argv.append(f"paradigm={args.paradigm}")
    return argv + list(args.overrides)


@contextlib.contextmanager
def _quiet_launcher(quiet: bool) -> Iterator[None]:
    """Silence torch elastic's report of a failed worker (medadapt reports it), and with ``quiet`` the launchers' notices."""
    names = ["torch.distributed.elastic"] + (["accelerate", "torch.distributed"] if quiet else [])
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _child_status(error: BaseException) -> int:
    """The exit status of the failed child behind a launcher exception (CalledProcessError or ChildFailedError)."""
    if isinstance(error, subprocess.CalledProcessError):
        return error.returncode
    failures = getattr(error, "failures", None) or {}
    codes = [getattr(f, "exitcode", 1) for f in failures.values()]
    return EXIT_ERROR if EXIT_ERROR in codes else (codes[0] if codes else 1)


def _launch(args: argparse.Namespace) -> int:
    """Run ``python -m medadapt.train`` in ``args.num_processes`` processes through accelerate's launcher API."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    except ImportError:  # pragma: no cover - torch without the elastic launcher
        ChildFailedError = subprocess.CalledProcessError  # type: ignore[misc,assignment]
    flags = ["--multi_gpu", "--num_processes", str(args.num_processes), "--num_machines", "1"]
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        flags += ["--mixed_precision", "no"]
    flags += ["--dynamo_backend", "no", "-m", "medadapt.train", *_run_argv(args)]
    launch_args = launch_command_parser().parse_args(flags)
    with _quiet_launcher(args.quiet):
        try:
            launch_command(launch_args)
        except (subprocess.CalledProcessError, ChildFailedError) as error:
            status = _child_status(error)
            if status != EXIT_ERROR:  # not a medadapt error (those were printed by the run): say what happened
                print(f"error: a training process exited with status {status} (its output is above).", file=sys.stderr)
            return status or 1
        except SystemExit as exit_:  # the launcher's own exits (e.g. interrupted)
            return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def run_train(argv: list[str]) -> int:
    """``medadapt train ARGS``: parse, then train in this process or launch several; returns the exit status."""
    args = train_parser().parse_intermixed_args(argv)
    if args.num_processes < 1:
        print("error: --num-processes must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    if args.num_processes > 1:
        return _launch(args)
    from ..train import main as train_main

    if args.quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return train_main(_run_argv(args))


def _config_source(args: argparse.Namespace) -> Path:
    return resolve_config(args.name or DEFAULT_CONFIG)


def _config_show(args: argparse.Namespace) -> int:
    from .config_doc import commented_config

    sys.stdout.write(commented_config(_config_source(args)))
    return 0


def _config_init(args: argparse.Namespace) -> int:
    from .config_doc import commented_config

    out = Path(args.output)
    if out.is_dir():
        out = out / "medadapt.yaml"
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; add --force to replace it, or give another path.")
    text = commented_config(_config_source(args))
    with storage_errors(f"cannot write {out}"):
        atomic_write_bytes(out, text.encode("utf-8"))
    print(f"wrote {out} (from config {args.name or DEFAULT_CONFIG!r}); run it with: medadapt train --config {out}")
    return 0


def add_train_commands(commands: Any) -> None:
    """Register ``train`` and ``config show|init`` on the ``medadapt`` subcommand parser."""
    commands.add_parser("train", help="train: the main job (medadapt train --config X [key=value ...])", description=TRAIN_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[run_arguments(), launch_arguments()])
    config = commands.add_parser("config", help="print or write a run config with every key explained")
    actions = config.add_subparsers(dest="config_command", required=True)
    names = ", ".join(config_names())
    show = actions.add_parser("show", help="print a config in full, every key commented")
    show.add_argument("name", nargs="?", help=f"a shipped config ({names}; default {DEFAULT_CONFIG}) or a YAML file")
    show.set_defaults(run=_config_show)
    init = actions.add_parser("init", help="write a config in full, every key commented, to edit and train with")
    init.add_argument("output", nargs="?", default="medadapt.yaml", help="file to write (default medadapt.yaml)")
    init.add_argument("--from", dest="name", help=f"start from this config ({names}; default {DEFAULT_CONFIG}) or a YAML file")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(run=_config_init)

