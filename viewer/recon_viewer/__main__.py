"""``python -m recon_viewer RUN [RUN ...]``: the same as ``recon view``."""

import sys

from recon_viewer.server import main

sys.exit(main())
