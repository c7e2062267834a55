"""Block offloading: keep some transformer blocks on the GPU and stream the rest from pinned CPU memory."""

from __future__ import annotations

# Memory presets of the DiT loader: the name, and how many of the 30 main blocks stay on the GPU
# (None = decide from free memory / all blocks).
MEMORY_PRESETS = {"auto": None, "high": None, "12GB": None, "8GB": None, "6GB": None}
