"""`zimage_core.bench` of the flat layout: the benchmark against diffusers is now `zimage_core.tools.bench` (one release)."""
from ._moved import redirect

redirect(__name__, "tools.bench")
