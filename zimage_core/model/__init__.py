"""The networks of Z-Image and how each is built from its files.

- transformer.py   the S3-DiT (ZImageDiT: embedders, refiners, single-stream blocks, final layer), NextDiT key names
- rope.py          3-axis rotary position embedding (caption, image height, image width)
- dit_loader.py    load_dit: a DiT from any checkpoint format (native, diffusers, ComfyUI, GGUF, fp8, comfy_quant)
- qwen3.py         Qwen3 (the text encoder's network; also a causal LM for the prompt enhancer)
- tokenizer.py     the Qwen2/Qwen3 byte-level BPE tokenizer on the `tokenizers` library alone
- text_encoder.py  load_text_encoder / TextEncoder: prompt -> tokens -> caption features
- vae.py           the Flux VAE (AutoencoderKL), load_vae
- latent.py        the Flux latent space: channels, scale factors, raw <-> model space

Builds on `zimage_core.weights`.
"""
