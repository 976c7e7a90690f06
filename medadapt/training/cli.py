"""Command-line entry shared by every recipe: ``--config``, ``key=value`` overrides, ``--resume``,
``--overwrite``, ``--resume-anyway``; runs the trainer and prints the accuracy matrix and the naive comparison."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..configs import DEFAULT_CONFIG, config_names, resolve_config
from ..errors import MedAdaptError
from .config import RunConfig, load_config


def run_arguments() -> argparse.ArgumentParser:
    """The options every run takes (recipes, ``medadapt train``, ``python -m medadapt.train``), as a parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", type=str, default=None,
                        help=f"a YAML file, or the name of a config shipped in medadapt: {', '.join(config_names())} (default: {DEFAULT_CONFIG})")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    parser.add_argument("--resume-anyway", action="store_true", help="with --resume: continue even though the training data changed since the run started")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in output_dir")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2 rehearsal.size=100")
    return parser


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[run_arguments()])
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def naive_config(config: RunConfig) -> RunConfig:
    """The same run as naive sequential training: continual paradigm, no rehearsal."""
    data = config.to_dict()
    data.update(paradigm="continual", compare_naive=False, output_dir=str(Path(config.output_dir) / "naive_baseline"))
    data["rehearsal"]["size"] = 0
    return load_config(None, defaults=data)


def format_matrix(results: dict[str, Any]) -> str:
    domains = results["domains"]
    first = max(len(s) for s in ["after stage", *results["stages"]]) + 2
    width = max(len(d) for d in [*domains, "0.000"]) + 2
    head = "after stage".ljust(first) + "".join(d.rjust(width) for d in domains)
    rows = [s.ljust(first) + "".join(f"{v:.3f}".rjust(width) for v in row) for s, row in zip(results["stages"], results["accuracy_matrix"])]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None, default_config: str | Path | None = DEFAULT_CONFIG, paradigm: str | None = None, description: str = "medadapt recipe") -> int:
    """Parse arguments, train, print results. Returns a process exit code (2 after a medadapt error, printed
    by the main process as one ``error: ...`` line).

    ``default_config``: the config used without ``--config``: a shipped config's name or a YAML path."""
    import torch
    from accelerate import PartialState

    from .launch import check_launch_environment
    from .outputs import write_outputs
    from .progress import quiet_library_warnings
    from .trainer import ContinualTrainer

    args = parse_args(argv, description)
    quiet_library_warnings()
    try:
        check_launch_environment()  # FSDP/DeepSpeed/Megatron refused before any process group or model exists
    except MedAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # cpu=True on a CPU-only machine: under `accelerate launch --multi_gpu`/torchrun this is what makes
    # accelerate form a gloo process group (MULTI_CPU) instead of N independent single processes
    state = PartialState(cpu=not torch.cuda.is_available())
    try:
        overrides = ([f"paradigm={paradigm}"] if paradigm else []) + list(args.overrides)
        chosen = args.config or default_config
        config = load_config(resolve_config(chosen) if chosen is not None else None, overrides)
        trainer = ContinualTrainer(config, resume=args.resume or args.resume_anyway, overwrite=args.overwrite, progress=not args.no_progress, resume_anyway=args.resume_anyway)
        trainer.setup()
        results = trainer.run()
        if config.compare_naive:
            naive_cfg = naive_config(config)
            resume_naive = args.resume and (Path(naive_cfg.output_dir) / "run.json").exists()
            naive = ContinualTrainer(naive_cfg, resume=resume_naive, overwrite=args.overwrite and not resume_naive, accelerator=trainer.accelerator, progress=not args.no_progress)
            naive_results = naive.run()
            results["naive_comparison"] = {k: naive_results[k] for k in ("acc", "bwt", "forgetting", "accuracy_matrix")}
            if state.is_main_process:
                write_outputs(Path(config.output_dir), results)
    except MedAdaptError as exc:
        if state.is_main_process:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if state.is_main_process:
        print(f"\n{config.paradigm}: accuracy matrix of the `{results['evaluated_adapter']}` adapter "
              "(row i = after stage i, column j = domain j)")
        print(format_matrix(results))
        print(f"ACC {results['acc']:.3f}  BWT {results['bwt']:+.3f}  forgetting {results['forgetting']:.3f}")
        if "naive_comparison" in results:
            c = results["naive_comparison"]
            print("\nnaive sequential training (continual, no rehearsal):")
            print(format_matrix({**results, "accuracy_matrix": c["accuracy_matrix"]}))
            print(f"ACC {c['acc']:.3f}  BWT {c['bwt']:+.3f}  forgetting {c['forgetting']:.3f}")
            print(f"\n{config.paradigm} vs naive: ACC {results['acc'] - c['acc']:+.3f}, BWT {results['bwt'] - c['bwt']:+.3f}")
        print(f"\noutputs in {config.output_dir}: manifest.json + adapters, results.json, accuracy_matrix.png, report.md")
    return 0
