"""`zimage_core.gpu_check` of the flat layout: the GPU check is now `zimage_core.tools.gpu_check` (one release)."""
from ._moved import redirect

redirect(__name__, "tools.gpu_check")
