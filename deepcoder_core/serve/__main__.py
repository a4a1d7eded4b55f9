"""``python -m deepcoder_core.serve --supervise STATE_FILE``: the ``--watch`` supervisor process."""

import sys
from pathlib import Path

from .supervisor import supervise

if len(sys.argv) == 3 and sys.argv[1] == "--supervise":
    supervise(Path(sys.argv[2]))
else:
    sys.exit("usage: python -m deepcoder_core.serve --supervise STATE_FILE")
