"""``python -m musicgen.studio [--port N] [--host 127.0.0.1] [--checkpoint PATH]``: start the local web studio.

It listens on 127.0.0.1 (this machine only) unless told otherwise, and prints the URL to open: it carries a
token made for this run, and only requests with it (the page gets a cookie from that URL), for this machine's
address and, for POSTs, from the studio's own page are served (`guard.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import secrets
import socket
import sys

from ..config import UserError
from .params import Limits


def claim_port(host: str, port: int) -> int:
    """`port` (0: any free one) if it can be listened on now, so the printed URL is one that will answer; an
    OSError (address in use, unknown host) otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
        return int(sock.getsockname()[1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m musicgen.studio", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port; default 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: only "
                        "this machine; anything else exposes the studio to your network)")
    parser.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt", help="model checkpoint (the default "
                        "of the page's model list)")
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="another checkpoint the page may choose (repeatable); runs/*/best.pt (what "
                        "python -m musicgen.finetune writes) are listed too")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=2, help="generations that run at once (default 2)")
    parser.add_argument("--max-upload-mb", type=float, default=2.0, help="largest prompt MIDI accepted (MiB)")
    parser.add_argument("--max-bars", type=int, default=Limits.max_bars, help="longest piece one Generate may ask")
    parser.add_argument("--max-variations", type=int, default=Limits.max_variations,
                        help="most variations per Generate")
    parser.add_argument("--max-streams", type=int, default=4, help="Play mode: streams playing at once (default 4)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests for this host name (default: the --host address and "
                        "localhost/127.0.0.1/::1 only; other names are refused against DNS rebinding)")
    parser.add_argument("--soundfont", default=None, help="General MIDI .sf2 for fluidsynth (default: "
                        "$MUSICGEN_SOUNDFONT or a system soundfont)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        from ..inference import load_checkpoint, resolve_checkpoint, resolve_device
        from ..inference.loader import check_model_fits
        from .app import StudioConfig, create_app
        from .models import find_models
    except ImportError as exc:
        print(f"error: the studio needs its extra packages ({exc.name} is missing): pip install -e '.[studio]'",
              file=sys.stderr)
        return 2
    try:
        checkpoint = str(resolve_checkpoint(args.checkpoint))  # a clear error now, not at the first Generate
        check_model_fits(load_checkpoint(checkpoint))  # damaged, crafted or NaN: refused now, not every job
        models = find_models(checkpoint, args.model, Path.cwd())
        device = resolve_device(args.device)
        if args.max_upload_mb <= 0 or args.workers < 1 or args.max_bars < 1 or args.max_variations < 1 \
                or args.max_streams < 0:
            raise UserError("--max-upload-mb, --workers, --max-bars and --max-variations must be positive "
                            "(--max-streams 0 turns Play off)")
        config = StudioConfig(checkpoint=checkpoint, device=device, workers=args.workers,
                              max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), soundfont=args.soundfont,
                              limits=Limits(args.max_bars, args.max_variations), host=args.host,
                              token=secrets.token_urlsafe(24), allowed_hosts=tuple(args.allow_host),
                              max_streams=args.max_streams, models=models)
        app = create_app(config)
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        port = claim_port(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} (another studio running? "
              "pick another --port)", file=sys.stderr)
        return 2
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"musicgen studio: http://{shown}:{port}/?token={config.token}  (models: {', '.join(n for n, _ in models)}; device {device}; "
          f"audio: {app.state.synth.describe()}; Ctrl-C stops it)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: other machines on your network can reach the studio",
              file=sys.stderr)
    if config.max_streams > 0 and config.stream_processes:  # Play's fork server imports torch once, now
        import threading

        from ..generation.stream_process import start_fork_server

        threading.Thread(target=start_fork_server, name="stream-fork-server", daemon=True).start()
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
