"""``recon view``: a local web viewer for run folders (Gaussian-splat captures and CT volumes).

The server (:mod:`recon_viewer.server`) reads run folders through the run-folder contract
(``docs/run-folder.md``) and serves a prebuilt web client from ``static/``; nothing is fetched
from the network. It imports no training code (and not torch), so it starts in about a second.

    from recon_viewer import serve
    serve(["runs/fox"], host="127.0.0.1", port=8765, open_browser=True)
"""

from __future__ import annotations

from recon_viewer.server import ViewerServer, main, serve, start

__all__ = ["ViewerServer", "main", "serve", "start"]
