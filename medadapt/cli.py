"""The ``medadapt`` command line.

    medadapt show IMAGE [-o OUT.png] [--window lung | --window 40,400] [--frame K]
                        [--axis 2 --slice middle --volume T] [--model tiny-clip | HUB_ID | FOLDER] [--scale 8]
    medadapt recover FOLDER

``show`` writes a PNG of IMAGE as the model receives it: DICOM rescale and window (or the one you
give), MONOCHROME1 inversion, 16-bit scaling, NIfTI orientation, then the base model's own resize,
crop and (undone) normalisation. Use it to check windowing and orientation before training.

``recover`` finishes or undoes a save that was killed while it swapped folders in FOLDER (loading
reports such a folder but never changes it). Run it only on a folder you own.

    medadapt export vllm SAVE OUT [--stages S ...] [--max-lora-rank 16] [--drop-non-language]

``export vllm`` writes each generative stage of SAVE as a peft folder for vLLM and prints the
``vllm serve ... --enable-lora --lora-modules ...`` command (see :mod:`medadapt.export.vllm`).

    medadapt train [--config NAME_OR_YAML] [key=value ...] [--num-processes N] [-q] [--resume | --overwrite]
    medadapt config show [NAME_OR_YAML]        medadapt config init [OUT.yaml] [--from NAME_OR_YAML]

``train`` runs the main job: the config's domains learned one after another (the checkout's
``recipes/rehearsal.py``); also ``accelerate launch -m medadapt.train ...``. ``config show`` prints a
config with every key explained, ``config init`` writes one to edit (see :mod:`medadapt.training.commands`).

    medadapt demo SAVE_OR_HUB_ID [--host 127.0.0.1] [--port 7860] [--share]

``demo`` serves a Gradio page for the model (the ``[demo]`` extra; see :mod:`medadapt.webdemo`).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ._io import atomic_write_bytes, storage_errors
from .errors import MedAdaptError
from .export.cli import add_export_commands
from .training.commands import add_train_commands, run_train
from .webdemo.cli import add_demo_command

__all__ = ["main", "image_processor_for"]

#: The largest side, in pixels, of the PNG ``show`` writes (``--scale`` is refused beyond it).
MAX_SHOWN_SIDE = 8192


def image_processor_for(model: str) -> Any:
    """The image processor of ``model``: a built-in tiny model, a Hub id or a local folder (or its ``base/``)."""
    from .tiny import tiny_base, tiny_names

    if model in tiny_names():  # every built-in name, without asking the Hub
        return tiny_base(model, seed=0).image_processor
    from transformers import AutoImageProcessor

    candidates = [model]
    if (Path(model) / "base").is_dir():
        candidates.insert(0, str(Path(model) / "base"))
    errors = []
    for source in candidates:
        try:
            return AutoImageProcessor.from_pretrained(source)
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/HF errors
            errors.append(f"{source}: {exc}")
    raise MedAdaptError(
        f"cannot load the image processor of {model!r}: it is neither a built-in name ({', '.join(tiny_names())}), "
        f"a local model folder, nor a Hub id reachable now. Details: {' | '.join(errors)}"
    )


def _window(text: str | None) -> Any:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 2:
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            pass
    return text


def _slice(text: str) -> Any:
    return int(text) if text.lstrip("-").isdigit() else text


def _show(args: argparse.Namespace) -> int:
    from .images import load_image, model_input_image
    from .medical import is_nifti, nifti_slices

    window = _window(args.window)
    source: Any = args.image
    if is_nifti(source):
        if args.slice == "all":
            raise MedAdaptError("show writes one image: give --slice middle or an index, not 'all'.")
        source = nifti_slices(source, axis=args.axis, slices=_slice(args.slice), window=window, volume=args.volume)[0]
        window = None
    processor = image_processor_for(args.model)
    if args.original:
        picture = load_image(source, window=window, frame=args.frame)
    else:
        picture = model_input_image(source, processor, window=window, frame=args.frame)
    out = Path(args.output) if args.output else Path(Path(args.image).name.split(".")[0] + ".model_input.png")
    if out.is_dir():
        raise MedAdaptError(f"-o {out} is a folder; give the PNG's file name, e.g. -o {out / 'model_input.png'}.")
    largest = max(picture.width, picture.height)
    if args.scale > 1 and largest * args.scale > MAX_SHOWN_SIDE:
        raise MedAdaptError(
            f"--scale {args.scale} would write a {picture.width * args.scale}x{picture.height * args.scale} PNG; "
            f"the limit is {MAX_SHOWN_SIDE} pixels a side: use --scale {max(1, MAX_SHOWN_SIDE // largest)} or less."
        )
    shown = picture.resize((picture.width * args.scale, picture.height * args.scale), Image.NEAREST) if args.scale > 1 else picture
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG")
    with storage_errors(f"cannot write {out}"):
        atomic_write_bytes(out, buffer.getvalue())
    what = "full-resolution windowed image" if args.original else f"model input of {args.model}"
    print(f"wrote {out}: {what}, {picture.width}x{picture.height} shown at {shown.width}x{shown.height}, window={args.window or 'default'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``medadapt`` command."""
    parser = argparse.ArgumentParser(prog="medadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="write a PNG of an image as the model receives it")
    show.add_argument("image", help="image file: PNG/JPEG/TIFF (8 or 16 bit), DICOM, or NIfTI")
    show.add_argument("-o", "--output", help="PNG to write (default: IMAGE's name + .model_input.png in the current folder)")
    show.add_argument("--window", help="window name (lung, brain, bone, ...; 'full' for the real range) or CENTER,WIDTH")
    show.add_argument("--frame", type=int, help="frame of a multi-frame DICOM")
    show.add_argument("--axis", type=int, default=2, help="NIfTI slicing axis after reorienting to RAS+ (0 sagittal, 1 coronal, 2 axial)")
    show.add_argument("--slice", default="middle", help="NIfTI slice: 'middle' or an index")
    show.add_argument("--volume", type=int, help="time point of a 4D NIfTI series")
    show.add_argument("--model", default="tiny-clip", help="whose image processor to use: a built-in tiny name (tiny-clip, tiny-llava, ...), a Hub id or a local folder")
    show.add_argument("--scale", type=int, default=8, help=f"enlarge the written PNG this many times (nearest neighbour; 1 = as is; at most {MAX_SHOWN_SIDE} pixels a side)")
    show.add_argument("--original", action="store_true", help="write the windowed image at full resolution, before the model's resize/crop")
    recover = commands.add_parser("recover", help="finish or undo an interrupted save in a folder you own")
    recover.add_argument("folder", help="a medadapt save folder or training output_dir")
    recover.set_defaults(run=_recover)
    add_train_commands(commands)  # train, config show|init (medadapt/training/commands.py)
    add_export_commands(commands)  # export vllm (medadapt/export/cli.py)
    add_demo_command(commands)  # demo (medadapt/webdemo/cli.py)
    return parser


def _recover(args: argparse.Namespace) -> int:
    from .saves.transaction import recover_folder

    try:
        print(f"{args.folder}: {recover_folder(args.folder)}")
    except MedAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medadapt`` console script; returns the exit status (2 on a medadapt error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and not {"-h", "--help"} & set(argv):  # its key=value overrides may sit between options
        return run_train(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "show" and args.scale < 1:
        print("error: --scale must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.run(args) if hasattr(args, "run") else _show(args)
    except MedAdaptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
