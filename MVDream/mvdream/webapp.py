"""What both gradio apps share: server flags, an offline launch, and path checks.

Imports neither gradio nor MindSpore at module level, so the apps decide when those load.
"""
import os
import socket
from pathlib import Path


class OutsideRootError(ValueError):
    """A client-supplied path that resolves outside the folder it may reach."""


def add_server_args(parser):
    """--host (127.0.0.1), --port (a free one) and --share (off)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the app)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true",
                        help="also open a public gradio.live link (needs internet; off by default)")
    return parser


def free_port(host="127.0.0.1", start=7860, tries=100):
    """First port from ``start`` that ``host`` can bind."""
    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {start}..{start + tries - 1} on {host}; pass --port")


def offline_environment():
    """Environment for a gradio server that never calls home: no analytics, no version check.

    Call it in the app's ``main()`` before gradio is imported (gradio reads these when it loads).
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def offline_theme(gr):
    """The default theme with system fonts (the stock one loads Google Fonts from the internet)."""
    sans = ["ui-sans-serif", "system-ui", "sans-serif"]
    mono = ["ui-monospace", "Consolas", "monospace"]
    return gr.themes.Default(font=sans, font_mono=mono)


def launch(demo, gr, args, allowed_paths=(), title="", css=None):
    """Serve ``demo`` on args.host/args.port (blocking) with everything internet-bound off."""
    port = args.port or free_port(args.host)
    print(f"{title or 'app'}: http://{args.host}:{port}", flush=True)
    demo.launch(server_name=args.host, server_port=port, share=bool(args.share), inbrowser=False,
                show_error=True, allowed_paths=[str(p) for p in allowed_paths], theme=offline_theme(gr), css=css,
                footer_links=[], ssr_mode=False, quiet=True, pwa=False, mcp_server=False)


def resolve_under(root, candidate):
    """``candidate`` (relative to ``root``, or absolute) as a resolved path inside ``root``.

    Symlinks and ``..`` are resolved first, so a path that only looks like it is inside
    ``root`` is refused too. Raises ``OutsideRootError``.
    """
    root = Path(root).resolve()
    text = str(candidate or "").strip()
    if not text or "\x00" in text:
        raise OutsideRootError("empty path")
    path = Path(text)
    resolved = (path if path.is_absolute() else root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise OutsideRootError(f"{text} is outside {root}; only files under the outputs folder can be opened")
    return resolved
