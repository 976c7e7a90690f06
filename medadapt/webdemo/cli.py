"""``medadapt demo SAVE_OR_HUB_ID [--host H] [--port P] [--share]``: serve the demo page (see :mod:`.app`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_demo_command(commands: Any) -> None:
    """Register ``demo`` on the ``medadapt`` parser's sub-parsers ``commands``."""
    demo = commands.add_parser("demo", help="serve a Gradio demo page for a save folder or Hub repo (pip install 'medadapt[demo]')")
    demo.add_argument("source", help="a medadapt save folder or Hub repo id")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve others)")
    demo.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    demo.add_argument("--share", action="store_true", help="also open a temporary public Gradio link")
    demo.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .app import build_demo
    from .inputs import MAX_UPLOAD_BYTES

    build_demo(args.source).launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD_BYTES)
    return 0
