"""The advanced example graphs: ControlNet Union (canny, depth + pose, inpaint, tile upscale), NAG (our sampler and
KSampler), several GPUs with ComfyUI-Distributed, and LoRA training on a GGUF base."""
from __future__ import annotations

from graphs_basic import (BASE, BASE_GGUF, CONTROLNET, CONTROLNET_TILE, DATASET_FOLDER, FOX, MODELS_MD, TE, TURBO, VAE,
                          decode_save, ksampler_turbo, loaders, prompt, sampler, vae_loader)
from workflow_format import Graph


def controlnet_models(g: Graph, controlnet: str = CONTROLNET, title: str = "Load ControlNet"):
    """The DiT, text encoder, VAE and ControlNet loaders in the Models group: (dit, te, vae, controlnet)."""
    dit, te = loaders(g)
    vae = vae_loader(g)
    cn = g.add("ZImageControlNetLoader", 1, title, {"controlnet_name": controlnet, "weight_dtype": "auto"},
               size=(340, 90))
    g.group("Models", 1)
    return dit, te, vae, cn


def controlnet_canny() -> Graph:
    g = Graph("controlnet_canny", "ControlNet (canny) with Z-Image-Turbo",
              "The edges of an uploaded picture (native Canny node) steer Z-Image-Turbo through the ControlNet Union "
              "(alibaba-pai Fun-Controlnet-Union): the layout is kept, the prompt sets everything else.",
              tags=["controlnet", "turbo"])
    g.note(0, "About this workflow", f"""
## ControlNet Union: canny edges

**Load Image** -> native **Canny** -> **Z-Image ControlNet Apply** -> sampler. Any preprocessor works the
same way (depth, pose, scribble, a gray or blurred picture for tile); chain a second Apply node to stack
two controls, each with its own strength and range.

- *strength* 0.65-0.9 for Turbo; *end_percent* below 1 frees the last steps for detail.
- The control image is resized to the generated size.
- The hints act on the whole image+caption sequence as in the reference (diffusers / VideoX-Fun); ComfyUI's
  native ZImageFunControlnet adds them to image tokens only, so its pictures differ.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET}` (1.0, 2.1, lite and tile files load the same way)
""", size=(420, 560))
    dit, te, vae, cn = controlnet_models(g)
    img = g.add("LoadImage", 2, "Control Picture", {"image": "example.png"}, size=(440, 420))
    edges = g.add("Canny", 2, "Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": img[0]},
                  size=(440, 90))
    g.group("Control image", 2, color="#88a")
    pos = prompt(g, te, "A cozy reading nook by a tall window, a green velvet armchair, stacks of old books and a "
                        "brass lamp, late afternoon light, photograph.", col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    ctl = g.add("ZImageControlNetApply", 3, "ControlNet Apply",
                {"strength": 0.75, "start_percent": 0.0, "end_percent": 1.0},
                {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": edges[0]}, size=(440, 190))
    samp = sampler(g, ctl[0], pos, lat, 4, seed=3)
    decode_save(g, vae, samp, 4, "z-image-controlnet")
    return g


def controlnet_depth_pose() -> Graph:
    g = Graph("controlnet_depth_pose", "Two ControlNets stacked: depth + pose",
              "A depth map and a pose skeleton steer Z-Image-Turbo together: two Z-Image ControlNet Apply nodes are "
              "chained, their hints add up, each with its own strength and range.",
              tags=["controlnet", "turbo"])
    g.note(0, "About this workflow", f"""
## Stacked controls: depth + pose

Two **Z-Image ControlNet Apply** nodes in a chain, both with the same Union file (it knows canny, depth,
pose, MLSD, HED, scribble and gray). Their hints are summed in every step; each keeps its own
*strength* and *start/end percent*.

- **Depth Map** and **Pose Skeleton**: load pictures made by any preprocessor (a depth estimator, an
  OpenPose renderer; no annotator models are bundled). They are resized to the generated size.
- Depth (0.55, whole schedule) sets the space; pose (0.6, until 0.8) sets the figure and leaves the last
  steps free for detail. Keep the sum of the strengths below about 1.3 for Turbo.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET}` (any Union file: 1.0, 2.1, lite)
""", size=(420, 560))
    dit, te, vae, cn = controlnet_models(g)
    depth = g.add("LoadImage", 2, "Depth Map", {"image": "example.png"}, size=(440, 420))
    pose = g.add("LoadImage", 2, "Pose Skeleton", {"image": "example.png"}, size=(440, 420))
    g.group("Control images", 2, color="#88a")
    pos = prompt(g, te, "A dancer in a flowing red dress mid-spin on an empty theatre stage, a single spotlight, dust "
                        "in the light beam, photograph.", col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    c1 = g.add("ZImageControlNetApply", 3, "ControlNet Apply (depth)",
               {"strength": 0.55, "start_percent": 0.0, "end_percent": 1.0},
               {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": depth[0]}, size=(440, 190))
    c2 = g.add("ZImageControlNetApply", 3, "ControlNet Apply (pose)",
               {"strength": 0.6, "start_percent": 0.0, "end_percent": 0.8},
               {"dit": c1[0], "controlnet": cn[0], "vae": vae[0], "image": pose[0]}, size=(440, 190))
    samp = sampler(g, c2[0], pos, lat, 4, seed=21)
    decode_save(g, vae, samp, 4, "z-image-depth-pose")
    return g


def controlnet_inpaint() -> Graph:
    g = Graph("controlnet_inpaint", "Inpainting with a ControlNet (2.0+ inpaint input)",
              "Repaint the masked part of a picture while the ControlNet keeps its structure: the Union 2.x file gets "
              "the picture and the mask through its inpaint input, the latent noise mask keeps the rest exactly.",
              tags=["controlnet", "inpainting", "turbo"])
    g.note(0, "About this workflow", f"""
## Inpainting with the ControlNet's inpaint input

1. Load a picture, right-click **Input Image** > *Open in MaskEditor*, paint the area to change.
2. Describe the whole picture in the prompt.

The picture and its mask go twice into the graph:
- into **Z-Image ControlNet Apply** as `inpaint_image` / `inpaint_mask` (the 33-channel 2.0+ files read
  control latent + keep mask + masked picture, as diffusers' `ZImageControlNetInpaintPipeline`), with the
  picture's **Canny** edges as the control image, so the new content follows the old outlines;
- into native **Set Latent Noise Mask**, so everything outside the mask stays exactly as it was.

Use a pose or depth picture instead of the edges to change more than the surface.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET}` (2.0, 2.1 or lite: the 1.0 file has no inpaint input)
""", size=(420, 600))
    dit, te, vae, cn = controlnet_models(g)
    img = g.add("LoadImage", 2, "Input Image (paint the mask)", {"image": "example.png"}, size=(440, 420))
    edges = g.add("Canny", 2, "Canny", {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": img[0]},
                  size=(440, 90))
    enc = g.add("ZImageVAEEncode", 2, "Encode Image", {"tiled": False}, {"vae": vae[0], "image": img[0]},
                size=(440, 80))
    mask = g.add("SetLatentNoiseMask", 2, "Set Latent Noise Mask", inputs={"samples": enc[0], "mask": img[1]},
                 size=(440, 50))
    g.group("Image and mask", 2, color="#88a")
    pos = prompt(g, te, "A sunlit kitchen table with a blue ceramic bowl full of ripe lemons, a linen cloth and a "
                        "glass of water, soft morning light, photograph.", col=3)
    ctl = g.add("ZImageControlNetApply", 3, "ControlNet Apply (inpaint)",
                {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
                {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": edges[0], "inpaint_image": img[0],
                 "inpaint_mask": img[1]}, size=(440, 230))
    samp = sampler(g, ctl[0], pos, mask, 4, seed=13, denoise=1.0)
    decode_save(g, vae, samp, 4, "z-image-controlnet-inpaint")
    return g


def controlnet_tile_upscale() -> Graph:
    g = Graph("controlnet_tile_upscale", "Tile ControlNet upscale",
              "A small picture is enlarged 2x (native Upscale Image By) and re-rendered by Turbo with the tile "
              "ControlNet, which keeps the picture's layout and colours while the sampler adds fine detail.",
              tags=["controlnet", "upscale", "tile", "turbo"])
    g.note(0, "About this workflow", f"""
## Tile upscale

**Load Image** -> native **Upscale Image By** (2x, lanczos) -> the enlarged picture is both
- the **control image** of the tile ControlNet (strength 0.85, as VideoX-Fun's tile example), and
- the **start latent** (VAE Encode, denoise 0.75): the sampler redraws it at the new size.

The tile model keeps what is where; the prompt and the sampler add the detail the small picture
lacked. Lower *denoise* keeps more of the enlarged picture; lower *strength* lets the prompt change more.
Pictures over ~1.5 megapixels: use the pack's tiled VAE options.
{MODELS_MD.format(dit=TURBO)}- `model_patches/{CONTROLNET_TILE}` (or the tile lite file)
""", size=(420, 560))
    dit, te, vae, cn = controlnet_models(g, CONTROLNET_TILE, "Load Tile ControlNet")
    img = g.add("LoadImage", 2, "Small Picture", {"image": "example.png"}, size=(440, 420))
    big = g.add("ImageScaleBy", 2, "Upscale Image By", {"upscale_method": "lanczos", "scale_by": 2.0},
                {"image": img[0]}, size=(440, 90))
    enc = g.add("ZImageVAEEncode", 2, "Encode Enlarged Picture", {"tiled": False}, {"vae": vae[0], "image": big[0]},
                size=(440, 80))
    g.group("Picture", 2, color="#88a")
    pos = prompt(g, te, "A detailed photograph of an old stone harbour town at golden hour, fishing boats, sharp "
                        "textures of stone and wood, natural colours.", col=3)
    ctl = g.add("ZImageControlNetApply", 3, "ControlNet Apply (tile)",
                {"strength": 0.85, "start_percent": 0.0, "end_percent": 1.0},
                {"dit": dit[0], "controlnet": cn[0], "vae": vae[0], "image": big[0]}, size=(440, 190))
    samp = sampler(g, ctl[0], pos, enc, 4, seed=7, denoise=0.75)
    decode_save(g, vae, samp, 4, "z-image-tile-upscale")
    return g


def nag_turbo() -> Graph:
    g = Graph("nag_turbo", "Z-Image-Turbo with a negative prompt (NAG)",
              "Turbo at cfg 1 with a working negative prompt: the Z-Image NAG node (Normalized Attention Guidance) "
              "steers the image tokens' attention away from the negative prompt in every layer, at the cost of one "
              "extra attention per layer instead of a second full CFG pass.",
              tags=["text-to-image", "turbo", "nag", "negative prompt"])
    g.note(0, "About this workflow", f"""
## Negative prompt for Turbo (NAG)

Turbo samples at **cfg 1**, where the sampler's negative input does nothing. The **Z-Image NAG** node
brings the negative prompt back: in every main layer the image tokens also look at the negative prompt,
and their attention output is pushed away from that answer.

- `scale` 5: strength (0 = off, the same picture as without the node).
- `tau` 2.5: cap on how far a token's output may grow; lower is gentler.
- `alpha` 0.25: share of the guided output that is mixed in.
- `start` / `end`: the part of the schedule with NAG (fractions of the steps).

The sampler stays at 8 steps, cfg 1. Remove a thing the picture keeps showing by naming it in the
negative prompt (here: text and watermarks, blur, oversaturated colours).
{MODELS_MD.format(dit=TURBO)}""", size=(420, 560))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    neg = prompt(g, te, "blurry, low quality, oversaturated colours, text, watermark, logo, frame", col=2,
                 title="Negative Prompt", size=(440, 150))
    nag = g.add("ZImageNAG", 2, "Z-Image NAG", {"scale": 5.0, "tau": 2.5, "alpha": 0.25, "start": 0.0, "end": 1.0},
                {"dit": dit[0], "negative": neg[0]}, size=(340, 200))
    g.group("Negative prompt (NAG)", 2, color="#8a8a5a")
    pos = prompt(g, te, FOX, col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, nag[0], pos, lat, 4, seed=42)
    decode_save(g, vae, samp, 4, "z-image-nag")
    return g


def nag_ksampler() -> Graph:
    g = Graph("nag_ksampler", "Z-Image-Turbo with a NAG negative prompt in the native KSampler",
              "The pack's DiT handed to ComfyUI as a MODEL, Z-Image NAG on MODEL for a working negative prompt at "
              "cfg 1, then the native ModelSamplingAuraFlow (shift 3) and KSampler with res_multistep.",
              tags=["text-to-image", "turbo", "nag", "negative prompt", "interop"])
    g.note(0, "About this workflow", f"""
## A negative prompt for Turbo in native samplers

Turbo samples at **cfg 1**, where KSampler's negative input does nothing. **Z-Image NAG on MODEL**
(Normalized Attention Guidance) attaches the negative prompt to the MODEL instead: in every main layer the
image tokens also look at the negative prompt and their attention output is pushed away from it. Any
sampler node that takes a MODEL then uses it.

- `scale` 5 (0 = off, the same picture as without the node), `tau` 2.5, `alpha` 0.25.
- LoRA / adaLN nodes of this pack go before **Z-Image DiT to MODEL**; LoraLoaderModelOnly may go
  anywhere on the MODEL.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 480))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    model = g.add("ZImageDiTToModel", 2, "DiT to MODEL", inputs={"dit": dit[0]}, size=(340, 50))
    neg = prompt(g, te, "blurry, low quality, oversaturated colours, text, watermark, logo, frame", col=2,
                 title="Negative Prompt (NAG)", size=(440, 150))
    nag = g.add("ZImageNAGModel", 2, "Z-Image NAG on MODEL",
                {"scale": 5.0, "tau": 2.5, "alpha": 0.25, "start": 0.0, "end": 1.0},
                {"model": model[0], "negative": neg[0]}, size=(340, 200))
    shift = g.add("ModelSamplingAuraFlow", 2, "ModelSamplingAuraFlow", {"shift": 3.0}, {"model": nag[0]},
                  size=(340, 60))
    pos = prompt(g, te, FOX, col=3)
    ksampler_turbo(g, shift, pos, vae, 42, "z-image-nag-ksampler")
    return g


def distributed_turbo_t2i() -> Graph:
    g = Graph("distributed_turbo_t2i", "Z-Image-Turbo on several GPUs or machines (ComfyUI-Distributed)",
              "The Turbo text-to-image graph with ComfyUI-Distributed's Distributed Seed and Distributed Collector: "
              "the master and each worker make one picture with their own seed, the master saves them all. "
              "Alone (no workers) it is the plain Turbo graph.",
              tags=["text-to-image", "turbo", "distributed"])
    g.note(0, "About this workflow", f"""
## One graph, many GPUs (ComfyUI-Distributed)

Needs the **ComfyUI-Distributed** pack on the master and on every worker, and this pack and the same model
files on every machine. Add the workers in the Distributed panel (or `gpu_config.json`), then *Queue*:
the master and each worker render one picture. **Distributed Seed** gives the master the seed *s* and
worker *i* the seed *s + i*; **Distributed Collector** brings the workers' pictures to the master
(master's first), and Save Image saves them all. Headless:
`python -m zimage_core.client run workflows/api/distributed_turbo_t2i.json --server MASTER:8188 --workers all`
{MODELS_MD.format(dit=TURBO)}""", size=(420, 520))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    pos = prompt(g, te, FOX)
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    seed = g.add("DistributedSeed", 2, "Distributed Seed", {"seed": 42}, size=(440, 90), control="randomize")
    samp = sampler(g, dit[0], pos, lat, 3, control="fixed")
    samp.inputs["seed"] = seed[0]
    dec = g.add("ZImageVAEDecode", 3, "Decode", {"tiled": False}, {"vae": vae[0], "latent": samp[0]}, size=(340, 80))
    coll = g.add("DistributedCollector", 4, "Distributed Collector", {"load_balance": False}, {"images": dec[0]},
                 size=(320, 80))
    g.add("SaveImage", 4, "Save Image", {"filename_prefix": "z-image-distributed"}, {"images": coll[0]},
          size=(520, 560))
    return g


def lora_training() -> Graph:
    g = Graph("lora_training", "Train a Z-Image LoRA on a GGUF base (ComfyUI's training nodes)",
              "A folder of pictures with captions (ComfyUI's dataset nodes) encoded by the pack's VAE and text "
              "encoder, ComfyUI's Train LoRA on the pack's DiT from a GGUF file (kept quantized), Save LoRA, and a "
              "test picture with the fresh LoRA through Load LoRA Model and the native KSampler.",
              tags=["training", "lora", "gguf", "interop"])
    g.note(0, "About this workflow", f"""
## Train a LoRA (on a GGUF base)

1. Put 10-30 pictures in `ComfyUI/input/{DATASET_FOLDER}/` (png, jpg, webp), each with a caption in a
   `.txt` of the same name (`cat_01.png` + `cat_01.txt`); start every caption with a trigger word
   (here `zmg_style`). Press **R** so the folder shows up in *Load Image and Text Dataset from Folder*.
2. *Queue*. Training runs first (progress bar on **Train LoRA**), then **Save LoRA Weights** writes
   `output/loras/zimage_lora_<steps>_steps_<n>_.safetensors` (move it to `models/loras/` to use it
   later, e.g. in LoraLoaderModelOnly or the Z-Image LoRA Loader), then the test picture is made.

**The graph**: pictures resized to 1024 on the longer edge (mixed sizes are fine: then every picture
trains on its own; sizes are cropped to multiples of 16) -> Z-Image VAE Encode, captions ->
Z-Image Text Encode -> **Train LoRA** on the DiT from a GGUF file: the base stays quantized, each
layer's LoRA learns against its dequantized weight (QLoRA style). The trained LoRA also goes straight
into **Load LoRA Model** -> KSampler for a test picture.

**Settings** (Train LoRA): rank 16, AdamW at learning rate 0.0001, 1000 steps (about 50-100 steps per
picture), batch 1, bf16, gradient checkpointing on. Rank above a layer's size adds nothing (the log
says so). Lower memory: 768 on the longer edge, *offloading* on. Training at cfg 1 on Turbo slowly
undoes its distillation: train on the base model and test at cfg 4 (as here).
Interrupting (the queue's X) writes no file; it takes effect at Train LoRA's next progress update
(ComfyUI sends one every 0.5% of the steps: every 5 steps at 1000).

**Models**: `diffusion_models/{BASE_GGUF}` (a GGUF of Z-Image base, e.g. ComfyUI-GGUF's files; the
bf16 `{BASE}` works too), `text_encoders/{TE}`, `vae/{VAE}`.
""", size=(440, 760))
    dit = g.add("ZImageDiTLoader", 1, "Load Z-Image DiT (GGUF)",
                {"dit_name": BASE_GGUF, "weight_dtype": "auto", "memory": "auto"}, size=(340, 130))
    te = g.add("ZImageTextEncoderLoader", 1, "Load Qwen3 Text Encoder",
               {"text_encoder_name": TE, "dtype": "auto", "device": "default"}, size=(340, 130))
    vae = vae_loader(g)
    model = g.add("ZImageDiTToModel", 1, "DiT to MODEL", inputs={"dit": dit[0]}, size=(340, 50))
    g.group("Models", 1)
    ds = g.add("LoadImageTextDataSetFromFolder", 2, "Pictures and Captions", {"folder": DATASET_FOLDER},
               size=(400, 80))
    small = g.add("ResizeImagesByLongerEdge", 2, "Resize (longer edge)", {"longer_edge": 1024},
                  {"images": ds[0]}, size=(400, 80))
    lat = g.add("ZImageVAEEncode", 2, "Encode Pictures", {"tiled": False}, {"vae": vae[0], "image": small[0]},
                size=(400, 80))
    caps = prompt(g, te, "", col=2, title="Encode Captions", size=(400, 100), link=ds[1])
    g.group("Dataset", 2, color="#88a")
    train = g.add("TrainLoraNode", 3, "Train LoRA",
                  {"batch_size": 1, "grad_accumulation_steps": 1, "steps": 1000, "learning_rate": 0.0001,
                   "rank": 16, "optimizer": "AdamW", "loss_function": "MSE", "seed": 42, "training_dtype": "bf16",
                   "lora_dtype": "bf16", "quantized_backward": False, "algorithm": "LoRA",
                   "gradient_checkpointing": True, "checkpoint_depth": 1, "offloading": False,
                   "existing_lora": "[None]", "bucket_mode": False, "bypass_mode": False},
                  {"model": model[0], "latents": lat[0], "positive": caps[0]}, size=(360, 560), control="fixed")
    g.add("SaveLoRA", 3, "Save LoRA Weights", {"prefix": "loras/zimage_lora", "steps": 0},
          {"lora": train[0], "steps": train[2]}, size=(360, 90))
    g.add("LossGraphNode", 3, "Loss Graph", {"filename_prefix": "zimage_lora_loss"}, {"loss": train[1]},
          size=(360, 320))
    g.group("Training", 3, color="#a1309b")
    with_lora = g.add("LoraModelLoader", 4, "Load LoRA Model", {"strength_model": 1.0, "bypass": False},
                      {"model": model[0], "lora": train[0]}, size=(360, 110))
    pos = prompt(g, te, "zmg_style, a lighthouse on a rocky cliff at dusk, waves breaking below, warm light in "
                        "the lantern room.", col=4, title="Test Prompt", size=(360, 160))
    neg = prompt(g, te, "blurry, low quality, distorted, watermark, text", col=4, title="Negative Prompt",
                 size=(360, 110))
    empty = g.add("EmptySD3LatentImage", 4, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                  size=(360, 110))
    samp = g.add("KSampler", 5, "KSampler",
                 {"seed": 42, "steps": 28, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
                  "denoise": 1.0},
                 {"model": with_lora[0], "positive": pos[0], "negative": neg[0], "latent_image": empty[0]},
                 size=(340, 260), control="fixed")
    g.group("Test picture", 4, color="#8a8a5a")
    decode_save(g, vae, samp, 5, "zimage-lora-test")
    return g
