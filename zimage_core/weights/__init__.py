"""How weights are stored, read and kept: the lowest layer of the package.

- checkpoint.py  safetensors files and diffusers folders (memory-mapped), format identification, key prefixes
- gguf.py        GGUF files through the `gguf` library (DiT and llama.cpp-named text encoders)
- quant.py       packed formats (GGUF Q*/K-quants, scaled fp8, comfy_quant) and their dequantization
- ops.py         the layers every model is built from (Linear, Embedding, RMSNorm) computing from a stored weight
                 in any of those forms, plus the per-layer cast workspace and the CPU GEMM choice
- offload.py     block streaming between host and device, memory presets

Imports only `zimage_core.errors`.
"""
