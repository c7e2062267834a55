"""`zimage_core.api_client` of the flat layout: the headless ComfyUI client is now `zimage_core.client` (one release)."""
from ._moved import redirect

redirect(__name__, "client")
