"""`zimage_core.bench_quant` of the flat layout: the stored-format benchmark is now `zimage_core.tools.bench_quant` (one release)."""
from ._moved import redirect

redirect(__name__, "tools.bench_quant")
