"""``python -m zimage_core.client run ...``: see command.py."""
import sys

from .command import main

sys.exit(main())
