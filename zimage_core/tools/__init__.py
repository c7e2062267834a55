"""Programs built on the library (nothing in the library imports them).

- cli.py         `python -m zimage_core` / `zimage`: generate, make-tiny, bench (--full-size)
- bench.py       our core against diffusers on the same random weights (`python -m zimage_core.tools.bench`)
- bench_full.py  native ComfyUI against our nodes at the released sizes (`python -m zimage_core bench --full-size`)
- bench_quant.py load time, memory and step time of a 3840-wide DiT per stored format
- gpu_check.py   the one prepared script for a lent GPU (`python -m zimage_core.tools.gpu_check`)

The headless ComfyUI client is its own package, `zimage_core.client` (standard library only).
"""
