"""``python -m sdxl_server.tools.bench``."""

import sys

from .cli import main

sys.exit(main())
