"""What changes a loaded DiT for a run without changing the shared module.

- patching.py    PatchedDiT: a DiT plus an immutable tuple of patches, installed for one run and always removed
- lora/          LoRA and every other adapter kind (LoKr, LoHa, GLoRA, OFT, BOFT, full diffs, DoRA), key tables
- controlnet.py  ControlNet Union (1.0 / 2.x / lite / tile / inpaint): the control network and its block patch
- adaln.py       adaLN conditioning controls: patches that steer the DiT's timestep modulation
- nag.py         Normalized Attention Guidance (attention on a negative caption inside each block)
- compile.py     torch.compile of the transformer blocks, as a patch

Builds on `zimage_core.model` and `zimage_core.weights`.
"""
