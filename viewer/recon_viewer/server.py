"""The ``recon view`` HTTP server (standard library ``ThreadingHTTPServer``).

Routes (GET and HEAD only; everything else is 404 or 501):

==============================================  ==============================================
``/``                                           the web client (``static/index.html``)
``/static/<file>``                              built client assets shipped in this package
``/api/runs``                                   the runs given on the command line
``/api/run/<i>``                                one run's state (:meth:`RunFolder.state`)
``/api/run/<i>/points.bin``                     points-only subsample of ``splat.ply``
``/api/run/<i>/ct/<volume|reference|difference>.nii``            volumes in HU (int16 NIfTI)
``/api/run/<i>/ct/mip/<orientation>/<slab_mm>/<which>.nii``     thick-slab MIP of one of them
``/files/<i>/<path>``                           a file of run ``i`` (:func:`paths.safe_file`)
==============================================  ==============================================

Only files inside the given run folders and the packaged assets are served: no listing, no
``..`` (plain or percent-encoded), no absolute path, no symlink. Binds 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import threading
import webbrowser
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from recon.errors import InputError
from recon_viewer.paths import content_type, safe_file
from recon_viewer.runs import RunFolder, check_run_folder

__all__ = ["DEFAULT_PORT", "ViewerServer", "main", "serve", "start"]

DEFAULT_PORT = 8765
"""Tried first when no port is given; any free port is used when it is taken."""
MAX_POINTS = 1_000_000
"""Points sent for the points-only view."""
CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval' blob:; worker-src 'self' blob:; "
    "img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; connect-src 'self' data: blob:; "
    "font-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""Content-Security-Policy of every page: the browser itself refuses any other origin."""

_CT_ROUTE = re.compile(r"^/api/run/(\d+)/ct/(?:mip/(axial|coronal|sagittal)/([0-9]+(?:\.[0-9]+)?)/)?(volume|reference|difference)\.nii$")


def static_files() -> dict[str, Path]:
    """The packaged client assets by name (only these are served under ``/static/``)."""
    folder = Path(str(resources.files("recon_viewer") / "static"))
    if not folder.is_dir():
        return {}
    return {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


class _Handler(BaseHTTPRequestHandler):
    """Serves one :class:`ViewerServer`'s runs; see the module docstring for the routes."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    def version_string(self) -> str:
        return "recon-view"

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ dispatch
    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        try:
            if not self.path.startswith("/"):  # absolute-form targets (http://host/...)
                return self._not_found(head)
            # the path part of the target, decoded once (so %2e%2e arrives here as '..')
            path = unquote(self.path.split("?", 1)[0].split("#", 1)[0], errors="strict")
            self._route(path, head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except UnicodeDecodeError:
            self._not_found(head)

    def _route(self, path: str, head: bool) -> None:
        runs = self.server.runs
        if path in ("/", "/index.html"):
            return self._file(self.server.static.get("index.html"), head, cache=False)
        if path.startswith("/static/"):
            return self._file(self.server.static.get(path[len("/static/"):]), head, cache=True)
        if path == "/api/runs":
            return self._json([run.summary() for run in runs], head)
        m = re.match(r"^/api/run/(\d+)$", path)
        if m and int(m.group(1)) < len(runs):
            return self._json(runs[int(m.group(1))].state(), head)
        m = re.match(r"^/api/run/(\d+)/points\.bin$", path)
        if m and int(m.group(1)) < len(runs):
            return self._points(runs[int(m.group(1))], head)
        m = _CT_ROUTE.match(path)
        if m and int(m.group(1)) < len(runs):
            slab = float(m.group(3)) if m.group(3) else None
            return self._nifti(runs[int(m.group(1))], m.group(4), m.group(2), slab, head)
        m = re.match(r"^/files/(\d+)/(.+)$", path, re.DOTALL)
        if m and int(m.group(1)) < len(runs):
            return self._file(safe_file(runs[int(m.group(1))].root, m.group(2)), head, cache=False)
        return self._not_found(head)

    # ------------------------------------------------------------------ responses
    def _headers(self, status: int, ctype: str, length: int, cache: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-cache" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()

    def _bytes(self, data: bytes, ctype: str, head: bool, status: int = 200) -> None:
        self._headers(status, ctype, len(data), cache=False)
        if not head:
            self.wfile.write(data)

    def _json(self, obj, head: bool) -> None:
        self._bytes(json.dumps(obj, allow_nan=False, default=_json_default).encode(), "application/json", head)

    def _not_found(self, head: bool) -> None:
        self._bytes(b"not found\n", "text/plain; charset=utf-8", head, status=HTTPStatus.NOT_FOUND)

    def _file(self, path: Path | None, head: bool, cache: bool) -> None:
        if path is None:
            return self._not_found(head)
        try:
            f = open(path, "rb")  # noqa: SIM115 - only the open may answer 404; closed below
        except OSError:  # removed or unreadable since the check
            return self._not_found(head)
        with f:
            size = os.fstat(f.fileno()).st_size
            self._headers(200, content_type(path), size, cache)
            if not head:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    def _points(self, run: RunFolder, head: bool) -> None:
        from recon_viewer.splats import points_bytes

        path = safe_file(run.root, "splat.ply")
        if path is None:
            return self._not_found(head)
        try:
            data = run.cache.get(path, f"points:{MAX_POINTS}", lambda p: points_bytes(p, MAX_POINTS))
        except (OSError, ValueError) as err:
            return self._bytes(f"splat.ply: {err}\n".encode(), "text/plain; charset=utf-8", head, 422)
        self._bytes(data, "application/octet-stream", head)

    def _nifti(self, run: RunFolder, which: str, orientation: str | None, slab: float | None, head: bool) -> None:
        try:
            data = run.nifti(which, orientation, slab)
        except FileNotFoundError:
            return self._not_found(head)
        except (OSError, ValueError) as err:
            return self._bytes(f"{which}: {err}\n".encode(), "text/plain; charset=utf-8", head, 422)
        self._bytes(data, "application/octet-stream", head)


def _json_default(obj):
    """NaN-free JSON for numpy scalars that slip into state."""
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, runs: list[RunFolder], verbose: bool):
        self.runs = runs
        self.static = static_files()
        self.verbose = verbose
        super().__init__(address, _Handler)


class ViewerServer:
    """A started viewer: ``url``, ``host``, ``port``; ``serve_forever()`` or ``close()``."""

    def __init__(self, httpd: _HTTPServer, host: str):
        self.httpd = httpd
        self.host = host
        self.port = httpd.server_address[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{shown}:{self.port}/"
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (or ``close()`` from another thread)."""
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.httpd.server_close()

    def serve_in_thread(self) -> ViewerServer:
        """Serve from a daemon thread (tests, notebooks); returns ``self``."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()


def start(runs: Sequence[str | Path], host: str = "127.0.0.1", port: int | None = None, verbose: bool = False) -> ViewerServer:
    """Check the run folders and bind the server (not yet serving).

    Args:
        runs: run folders, shown in this order.
        host: address to bind; ``127.0.0.1`` unless the user asks for more.
        port: TCP port; ``None`` tries :data:`DEFAULT_PORT`, then any free port; ``0`` any.

    Raises:
        InputError: a path is not a run folder, or the port cannot be bound.
    """
    if not runs:
        raise InputError("RUN", "no run folder given (expected one or more folders written by recon fit or recon ct fit)")
    folders = [RunFolder(i, check_run_folder(path)) for i, path in enumerate(runs)]
    candidates = [DEFAULT_PORT, 0] if port is None else [port]
    for candidate in candidates:
        try:
            return ViewerServer(_HTTPServer((host, candidate), folders, verbose), host)
        except OSError as err:
            last = err
    if isinstance(last, socket.gaierror):
        raise InputError("--host", f"cannot resolve {host!r} ({last.strerror})")
    raise InputError("--port" if port is not None else "--host", f"cannot listen on {host}:{port} ({last.strerror}; expected a free port, or 0 for any)")


def serve(runs: Sequence[str | Path], host: str = "127.0.0.1", port: int | None = None, open_browser: bool = True, verbose: bool = False) -> None:
    """Start the viewer, print its URL (and a warning when not bound to localhost), open the
    browser unless told not to, and serve until Ctrl-C.

    Raises:
        InputError: see :func:`start`.
    """
    server = start(runs, host, port, verbose)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {host}:{server.port}, not only on this machine: anyone who can reach it can read these runs",
            file=sys.stderr,
            flush=True,
        )
    print(f"recon view: {server.url}  ({len(runs)} run{'s' if len(runs) != 1 else ''}; Ctrl-C to stop)", flush=True)
    if open_browser and _has_display():
        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    elif open_browser:
        print(f"no display here: open {server.url} in a browser (over ssh: ssh -L {server.port}:127.0.0.1:{server.port} <this host>)", flush=True)
    server.serve_forever()


def _has_display() -> bool:
    """Whether a graphical browser can open here (without one, Python's webbrowser module would
    start a text browser such as lynx in this terminal)."""
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon view", description="View run folders (splat captures, CT volumes) in the browser, offline.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by recon fit / recon ct fit")
    parser.add_argument("--port", type=int, default=None, help=f"TCP port (default {DEFAULT_PORT}, or any free one if taken)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the runs to your network)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m recon_viewer``: returns the exit code (2 with one line for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        serve(args.runs, args.host, args.port, open_browser=not args.no_browser, verbose=args.verbose)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
