"""The basic example graphs: text to image (Turbo, base with CFG, prompt enhancer), LoRAs, img2img, inpainting,
the adaLN tools, mixing with native nodes, KSampler on our MODEL, a low-VRAM setup; and the parts they share."""
from __future__ import annotations

from workflow_format import Graph

CONTROLNET = "Z-Image-Turbo-Fun-Controlnet-Union-2.0.safetensors"
CONTROLNET_TILE = "Z-Image-Turbo-Fun-Controlnet-Tile-2.1-2601-8steps.safetensors"
TURBO, BASE, TE, VAE = "z_image_turbo_bf16.safetensors", "z_image_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors"
BASE_GGUF = "z_image-Q8_0.gguf"  # a GGUF of the base model (placeholder name: any Z-Image GGUF works)
DATASET_FOLDER = "zimage_lora_dataset"  # a folder in ComfyUI/input/


FOX = ("Photograph of a red fox sitting in fresh snow at sunrise. Warm golden light grazes its thick winter fur "
       "and the frost on its whiskers, its breath is visible in the cold air. A snow-covered pine forest is softly "
       "out of focus behind it, long blue shadows lie across the snow. Shot at eye level on a 300mm telephoto lens, "
       "shallow depth of field, natural colours, crisp fine detail.")
MODELS_MD = """
**Models** (Comfy-Org repack, in `ComfyUI/models/`):
- `diffusion_models/{dit}`
- `text_encoders/qwen_3_4b.safetensors` (its tokenizer ships with ComfyUI)
- `vae/ae.safetensors` (the Flux VAE)
"""


def loaders(g: Graph, dit=TURBO, col=1, te_device="default", weight_dtype="auto", memory="auto"):
    d = g.add("ZImageDiTLoader", col, "Load Z-Image DiT",
              {"dit_name": dit, "weight_dtype": weight_dtype, "memory": memory}, size=(340, 130))
    t = g.add("ZImageTextEncoderLoader", col, "Load Qwen3 Text Encoder",
              {"text_encoder_name": TE, "dtype": "auto", "device": te_device}, size=(340, 130))
    return d, t


def vae_loader(g: Graph, col=1):
    return g.add("ZImageVAELoader", col, "Load Flux VAE", {"vae_name": VAE}, size=(340, 60))


def prompt(g: Graph, te, text, col=2, title="Prompt", size=(440, 230), link=None):
    return g.add("ZImageTextEncode", col, title, {"text": "" if link else text},
                 {"text_encoder": te[0], **({"text": link} if link else {})}, size=size)


def sampler(g: Graph, dit, pos, latent, col, seed=42, steps=8, cfg=1.0, denoise=1.0, negative=None,
            control="randomize", title="Z-Image Sampler"):
    inputs = {"dit": dit, "positive": pos[0], "latent": latent[0]}
    if negative is not None:
        inputs["negative"] = negative[0]
    return g.add("ZImageSampler", col, title,
                 {"seed": seed, "steps": steps, "cfg": cfg, "shift": 3.0, "denoise": denoise,
                  "cfg_truncation": 1.0, "cfg_normalization": 0.0, "sampler_name": "euler", "scheduler": "zimage"},
                 inputs, size=(340, 380), control=control)


def decode_save(g: Graph, vae, samp, col, prefix):
    d = g.add("ZImageVAEDecode", col, "Decode", {"tiled": False}, {"vae": vae[0], "latent": samp[0]}, size=(340, 80))
    s = g.add("SaveImage", col + 1, "Save Image", {"filename_prefix": prefix}, {"images": d[0]}, size=(520, 560))
    return d, s

def ksampler_turbo(g: Graph, model, pos, vae, seed: int, prefix: str):
    """KSampler at Turbo's settings (8 steps, cfg 1, res_multistep / simple) on `model` with a zeroed negative,
    1024x1024, decoded and saved: the sampling half of the graphs that use ComfyUI's KSampler on our MODEL."""
    zero = g.add("ConditioningZeroOut", 3, "Negative (zeroed prompt)", inputs={"conditioning": pos[0]},
                 size=(440, 30))
    lat = g.add("EmptySD3LatentImage", 3, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                size=(440, 110))
    samp = g.add("KSampler", 4, "KSampler",
                 {"seed": seed, "steps": 8, "cfg": 1.0, "sampler_name": "res_multistep", "scheduler": "simple",
                  "denoise": 1.0},
                 {"model": model[0], "positive": pos[0], "negative": zero[0], "latent_image": lat[0]},
                 size=(360, 260), control="randomize")
    decode_save(g, vae, samp, 4, prefix)


def turbo_t2i() -> Graph:
    g = Graph("turbo_t2i", "Z-Image-Turbo: text to image",
              "The default Z-Image graph: Z-Image-Turbo, 8 steps at cfg 1, 1024x1024. Loaders for the DiT, the "
              "Qwen3 text encoder and the Flux VAE, one prompt, the Z-Image sampler, decode and save.",
              tags=["text-to-image", "turbo"], default=True)
    g.note(0, "About this workflow", f"""
## Z-Image-Turbo: text to image

The everyday Z-Image graph. Turbo is distilled: **8 steps, cfg 1.0, shift 3** and no negative prompt.
{MODELS_MD.format(dit=TURBO)}
**Tips**
- Turbo likes long, concrete prompts: subject, setting, light, lens, colours. English or Chinese; text to
  render goes in double quotes.
- Any size that is a multiple of 16 works; the official ones are in the Empty Latent's *resolution* list.
- The seed is randomised after each run; set *control after generate* to `fixed` to keep a picture.
- Low on VRAM? Set the DiT loader's *weight_dtype* to `fp8_e4m3fn` or *memory* to `8GB`.
""", size=(420, 520))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    pos = prompt(g, te, FOX)
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, dit[0], pos, lat, 3)
    decode_save(g, vae, samp, 3, "z-image-turbo")
    return g


def base_cfg() -> Graph:
    g = Graph("base_cfg", "Z-Image (Base): CFG with a negative prompt",
              "The undistilled Z-Image base model: 28 steps, cfg 4 and a real negative prompt, at 1216x832. "
              "Slower than Turbo but more varied and more responsive to negatives and styles.",
              tags=["text-to-image", "base", "cfg"])
    g.note(0, "About this workflow", f"""
## Z-Image (Base): CFG and a negative prompt

The base model is not distilled: it needs **~25-50 steps and cfg 3-5**, and it reads a **negative prompt**
(every step runs twice, so it is about 2x slower per step than Turbo).
{MODELS_MD.format(dit=BASE)}
**Tips**
- *cfg_truncation* below 1.0 (e.g. 0.9) skips guidance on the last steps; *cfg_normalization* 1.0 tames
  over-saturated colours at high cfg.
- The resolution preset `1216x832 (3:2)` overrides width/height; pick `custom` to type your own.
""", size=(420, 440))
    dit, te = loaders(g, dit=BASE)
    vae = vae_loader(g)
    g.group("Models", 1)
    pos = prompt(g, te, "Cinematic photograph of an old lighthouse keeper in a yellow raincoat standing on wet black "
                        "rocks during a storm, huge waves breaking behind him, the lighthouse beam cutting through rain "
                        "and sea spray, dramatic overcast sky, muted teal and amber colour grade, 35mm film grain.",
                 title="Positive Prompt")
    neg = prompt(g, te, "blurry, out of focus, low quality, jpeg artifacts, oversaturated, cartoon, 3d render, "
                        "deformed hands, extra fingers, watermark, signature, text",
                 title="Negative Prompt", size=(440, 160))
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "1216x832 (3:2)", "width": 1216, "height": 832, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, dit[0], pos, lat, 3, seed=1234, steps=28, cfg=4.0, negative=neg)
    decode_save(g, vae, samp, 3, "z-image-base")
    return g


def prompt_enhancer_turbo() -> Graph:
    g = Graph("prompt_enhancer_turbo", "Prompt enhancer + Z-Image-Turbo",
              "A short idea is rewritten into a long, detailed prompt by the Qwen3 text encoder that is already "
              "loaded (no extra model, nothing sent anywhere), then encoded and rendered with Turbo.",
              tags=["text-to-image", "turbo", "prompt-enhancer"])
    g.note(0, "About this workflow", f"""
## Prompt enhancer + Turbo

**Z-Image Prompt Enhancer** turns a short idea into the long, concrete description Turbo works best
with. It runs on the **same Qwen3 text encoder** that encodes the prompt: no second model.
Its output is wired into the *text* input of **Z-Image Text Encode**.
{MODELS_MD.format(dit=TURBO)}
**Tips**
- The rewrite is cached: it only runs again when the enhancer's inputs change, so changing the image
  seed does not rewrite the prompt. Change the enhancer's *seed* for another rewrite.
- *preset* `concise` gives 2-3 sentences; `custom` uses your own *system_prompt*.
- *endpoint_url* (e.g. `http://127.0.0.1:11434/v1` for Ollama) uses a local chat server instead.
""", size=(420, 560))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    enh = g.add("ZImagePromptEnhancer", 2, "Prompt Enhancer",
                {"prompt": 'a cat cafe poster that says "OPEN LATE"', "preset": "official", "seed": 0,
                 "max_new_tokens": 512, "temperature": 0.7, "system_prompt": "", "endpoint_url": "",
                 "endpoint_model": ""}, {"text_encoder": te[0]}, size=(440, 460), control="fixed")
    pos = prompt(g, te, "", col=3, title="Encode Enhanced Prompt", size=(340, 150), link=enh[0])
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "832x1216 (2:3)", "width": 832, "height": 1216, "batch_size": 1}, size=(340, 160))
    samp = sampler(g, dit[0], pos, lat, 4, seed=7)
    decode_save(g, vae, samp, 4, "z-image-enhanced")
    return g


def lora_stack() -> Graph:
    g = Graph("lora_stack", "LoRAs with Z-Image-Turbo",
              "Z-Image LoRAs applied between the DiT loader and the sampler: one LoRA Loader, then a LoRA Stack "
              "with more slots, each with its own strength and on/off switch. Files go in models/loras.",
              tags=["text-to-image", "turbo", "lora"])
    g.note(0, "About this workflow", f"""
## LoRAs

Put Z-Image LoRA files in `ComfyUI/models/loras/` and pick them in the nodes below (the names here are
placeholders). Every common format works: diffusers/PEFT, ai-toolkit, kohya/musubi, ComfyUI-native, LoKr.
LoRAs made for SDXL or Flux are refused with a message.

- **LoRA Loader**: one LoRA and its strength (1.0 as trained, 0.5-0.8 for a lighter touch).
- **LoRA Stack**: up to four; `None`, *enabled* off or strength 0 skip a slot.

LoRAs are applied as runtime patches: changing a strength does not reload the DiT.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 520))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    l1 = g.add("ZImageLoraLoader", 2, "Style LoRA",
               {"lora_name": "my_style_lora.safetensors", "strength": 0.8}, {"dit": dit[0]}, size=(360, 110))
    l2 = g.add("ZImageLoraStack", 2, "More LoRAs",
               {"lora_1": "my_detail_lora.safetensors", "strength_1": 0.6, "enabled_1": True,
                "lora_2": "my_character_lora.safetensors", "strength_2": 1.0, "enabled_2": False,
                "lora_3": "None", "strength_3": 1.0, "enabled_3": True,
                "lora_4": "None", "strength_4": 1.0, "enabled_4": True}, {"dit": l1[0]}, size=(360, 340))
    g.group("LoRAs", 2, color="#8a5a8a")
    pos = prompt(g, te, "Watercolour illustration of a small harbour town at dusk, pastel houses stacked up a steep "
                        "hill, fishing boats with reflections in calm water, warm lamps in the windows, loose "
                        "brushwork and paper texture.", col=3)
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, l2[0], pos, lat, 4, seed=99)
    decode_save(g, vae, samp, 4, "z-image-lora")
    return g


def img2img() -> Graph:
    g = Graph("img2img", "Image to image with Z-Image-Turbo",
              "An uploaded picture is encoded with the Flux VAE and re-rendered by Turbo at denoise 0.6: "
              "composition and colours are kept, the prompt sets the new look.",
              tags=["image-to-image", "turbo"])
    g.note(0, "About this workflow", f"""
## Image to image

**Load Image** -> **Z-Image VAE Encode** -> sampler with **denoise < 1**.
*denoise* is how much is repainted: 0.3 keeps nearly everything, 0.6 keeps the composition,
0.9 keeps only rough colours. 8 steps at denoise 0.6 run the last 8 steps of a 13-step schedule
(as KSampler does).

The output has the size of the input image (cropped to multiples of 16).
{MODELS_MD.format(dit=TURBO)}""", size=(420, 440))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    img = g.add("LoadImage", 2, "Input Image", {"image": "example.png"}, size=(440, 420))
    enc = g.add("ZImageVAEEncode", 2, "Encode Image", {"tiled": False}, {"vae": vae[0], "image": img[0]},
                size=(440, 80))
    pos = prompt(g, te, "Oil painting in the style of the Dutch golden age, rich dark background, soft window light "
                        "from the left, visible brush strokes and craquelure, warm earthy palette.", col=3)
    samp = sampler(g, dit[0], pos, enc, 4, seed=5, denoise=0.6)
    decode_save(g, vae, samp, 4, "z-image-img2img")
    return g


def inpaint() -> Graph:
    g = Graph("inpaint", "Inpainting with Z-Image-Turbo",
              "Repaint part of a picture: the mask painted on the image in ComfyUI's mask editor becomes a latent "
              "noise mask (native Set Latent Noise Mask); only the masked area is regenerated.",
              tags=["inpainting", "turbo"])
    g.note(0, "About this workflow", f"""
## Inpainting

1. Load a picture, right-click **Input Image** > *Open in MaskEditor* and paint the area to change.
2. Describe what should be there in the prompt (describe the whole picture, not only the hole).

The image's MASK goes through native **Set Latent Noise Mask** into the sampler: masked latent cells are
regenerated, the rest is kept exactly. *denoise* 0.85-1.0 replaces the content; lower values keep more
of the original colours under the mask.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 460))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    img = g.add("LoadImage", 2, "Input Image (paint the mask)", {"image": "example.png"}, size=(440, 420))
    enc = g.add("ZImageVAEEncode", 2, "Encode Image", {"tiled": False}, {"vae": vae[0], "image": img[0]},
                size=(440, 80))
    mask = g.add("SetLatentNoiseMask", 2, "Set Latent Noise Mask", inputs={"samples": enc[0], "mask": img[1]},
                 size=(440, 50))
    g.group("Image and mask", 2, color="#88a")
    pos = prompt(g, te, "A sunlit kitchen table with a blue ceramic bowl full of ripe lemons, a linen cloth and a "
                        "glass of water, soft morning light, photograph.", col=3)
    samp = sampler(g, dit[0], pos, mask, 4, seed=11, denoise=0.85)
    decode_save(g, vae, samp, 4, "z-image-inpaint")
    return g


def adaln_variety() -> Graph:
    g = Graph("adaln_variety", "Detail and seed variety controls (adaLN)",
              "Turbo with the pack's adaLN controls: Detail (more or less fine detail), Scale (strength of "
              "chosen blocks) and Conditioning Variance, which brings back seed-to-seed variety in composition.",
              tags=["text-to-image", "turbo", "adaln", "variety"])
    g.note(0, "About this workflow", f"""
## Detail and variety controls

These nodes sit between the DiT loader and the sampler and change how the model is conditioned,
without extra models or steps:

- **adaLN Detail**: tells the modulation a slightly later time in the middle of the schedule.
  `amount` 0.1 adds fine detail, -0.1 smooths; 0 = off.
- **adaLN Scale**: multiplies the modulation of a block range (here the last 10 main layers,
  texture). 1.0 = off, stay within 0.9-1.1.
- **Conditioning Variance**: Turbo gives very similar compositions for different seeds. Noise on the
  prompt tokens in the first 30% of the steps restores variety; its own seed picks the variation.
- **Conditioning Combine**: joins a subject prompt and a separate style prompt (`concat`: the model
  reads both; `average`: a token-wise blend weighted by *weight*), so the style can be swapped alone.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 620))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    a = g.add("ZImageAdaLNDetail", 2, "adaLN Detail", {"amount": 0.1, "start": 0.2, "end": 0.8}, {"dit": dit[0]},
              size=(340, 130))
    b = g.add("ZImageAdaLNScale", 2, "adaLN Scale (late blocks)",
              {"scale": 1.05, "gate": 1.0, "first_block": 20, "last_block": -1, "include_refiner": False},
              {"dit": a[0]}, size=(340, 180))
    c = g.add("ZImageConditioningVariance", 2, "Seed Variety",
              {"strength": 0.3, "until": 0.3, "seed": 2024}, {"dit": b[0]}, size=(340, 150), control="randomize")
    g.group("Detail and variety", 2, color="#8a8a5a")
    subject = prompt(g, te, "A lone hiker with a red backpack on a mountain ridge above a sea of clouds, early "
                            "morning, jagged peaks in the distance, crisp alpine air.", col=3, title="Subject Prompt",
                     size=(440, 170))
    style = prompt(g, te, "Wide-angle landscape photograph, soft golden light, muted film colours, fine grain.",
                   col=3, title="Style Prompt", size=(440, 150))
    pos = g.add("ZImageConditioningCombine", 3, "Subject + Style", {"mode": "concat", "weight": 0.5},
                {"conditioning_a": subject[0], "conditioning_b": style[0]}, size=(440, 110))
    lat = g.add("ZImageEmptyLatent", 3, "Image Size",
                {"resolution": "1216x832 (3:2)", "width": 1216, "height": 832, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, c[0], pos, lat, 4, seed=3)
    decode_save(g, vae, samp, 4, "z-image-variety")
    return g


def native_mixed() -> Graph:
    g = Graph("native_mixed", "Z-Image nodes mixed with native ComfyUI nodes",
              "The Z-Image sampler inside a graph of native ComfyUI nodes: EmptySD3LatentImage, ConditioningZeroOut "
              "as the negative, and the native VAE Loader + VAE Decode on ae.safetensors. LATENT and CONDITIONING "
              "are interchangeable between the pack and ComfyUI.",
              tags=["text-to-image", "turbo", "interop"])
    g.note(0, "About this workflow", f"""
## Mixing with native ComfyUI nodes

The pack's LATENT (raw Flux-VAE space, 16 channels) and CONDITIONING are ComfyUI's own formats, so native
nodes plug in directly:

- native **EmptySD3LatentImage** makes the starting latent,
- native **ConditioningZeroOut** of the prompt is the negative (only used when *cfg* is above 1, e.g. 4
  with the base model),
- native **Load VAE** + **VAE Decode** decode the sampler's latent with `ae.safetensors`.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 440))
    dit, te = loaders(g)
    vae = g.add("VAELoader", 1, "Load VAE (native)", {"vae_name": VAE}, size=(340, 60))
    g.group("Models", 1)
    pos = prompt(g, te, "Isometric miniature diorama of a tiny bookshop on a rainy street corner, warm light spilling "
                        "from the windows, wet cobblestones, tilt-shift photograph, soft pastel colours.")
    zero = g.add("ConditioningZeroOut", 2, "Negative (zeroed prompt)", inputs={"conditioning": pos[0]},
                 size=(440, 30))
    lat = g.add("EmptySD3LatentImage", 2, "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1},
                size=(440, 110))
    samp = sampler(g, dit[0], pos, lat, 3, seed=21, negative=zero)
    dec = g.add("VAEDecode", 3, "VAE Decode (native)", inputs={"samples": samp[0], "vae": vae[0]}, size=(340, 50))
    g.add("SaveImage", 4, "Save Image", {"filename_prefix": "z-image-native"}, {"images": dec[0]}, size=(520, 560))
    return g


def ksampler_bridge() -> Graph:
    g = Graph("ksampler_bridge", "Z-Image DiT with a LoRA into the native KSampler",
              "The pack's DiT Loader and LoRA Loader, handed to ComfyUI as a MODEL by Z-Image DiT to MODEL, then the "
              "native ModelSamplingAuraFlow (shift 3) and KSampler with res_multistep, as in ComfyUI's Z-Image "
              "template. Any node that takes a MODEL can take its place.",
              tags=["text-to-image", "turbo", "lora", "interop"])
    g.note(0, "About this workflow", f"""
## The pack's model in native nodes

**Z-Image DiT to MODEL** turns the DiT (with the LoRA attached before it) into a native ComfyUI MODEL:
KSampler, KSamplerAdvanced, SamplerCustomAdvanced, LoraLoaderModelOnly, DifferentialDiffusion and other
packs' nodes take it. The LoRA name is a placeholder: put a Z-Image LoRA in `ComfyUI/models/loras/`.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 440))
    dit, te = loaders(g)
    vae = vae_loader(g)
    g.group("Models", 1)
    lora = g.add("ZImageLoraLoader", 2, "Style LoRA",
                 {"lora_name": "my_style_lora.safetensors", "strength": 0.8}, {"dit": dit[0]}, size=(360, 110))
    model = g.add("ZImageDiTToModel", 2, "DiT to MODEL", inputs={"dit": lora[0]}, size=(360, 50))
    shift = g.add("ModelSamplingAuraFlow", 2, "ModelSamplingAuraFlow", {"shift": 3.0}, {"model": model[0]},
                  size=(360, 60))
    pos = prompt(g, te, "A lighthouse on a rocky cliff under a starry sky, long exposure photograph, the beam "
                        "sweeping over a calm sea, faint aurora on the horizon.", col=3)
    ksampler_turbo(g, shift, pos, vae, 7, "z-image-ksampler")
    return g


def low_vram_fast() -> Graph:
    g = Graph("low_vram_fast", "Z-Image-Turbo on an 8 GB GPU: fp8, block streaming, torch.compile",
              "Z-Image-Turbo at 1024x1024 within 8 GB of VRAM: fp8 weights, the DiT loader's 8GB memory preset "
              "(blocks that do not fit are streamed from pinned CPU memory), the text encoder on the CPU, and "
              "torch.compile of the transformer blocks.",
              tags=["text-to-image", "turbo", "low-vram", "speed"])
    g.note(0, "About this workflow", f"""
## Z-Image-Turbo on a small GPU

- **weight_dtype `fp8_e4m3fn`** halves the DiT (5.7 GiB instead of 11.5 GiB) at a small quality cost.
- **memory `8GB`** keeps as many of the 34 transformer blocks on the GPU as fit 8 GB (with 2 GiB left for
  the activations) and streams the others from pinned CPU memory while the previous block computes. With
  fp8 the whole DiT fits 8 GB, so nothing is streamed; with bf16, 15 blocks stay. `6GB` / `12GB` work the
  same way; `auto` decides from your card.
- **Text encoder on the CPU** keeps the 8 GB of Qwen3-4B off the GPU (encoding a prompt takes a few
  seconds on the CPU).
- **Torch Compile** compiles the blocks on the first run (tens of seconds; again for a new size), then
  steps are faster. Remove it if your setup has no Triton.
- The decoder tiles by itself when the image would not fit in free memory.
{MODELS_MD.format(dit=TURBO)}""", size=(420, 560))
    dit, te = loaders(g, te_device="cpu", weight_dtype="fp8_e4m3fn", memory="8GB")
    vae = vae_loader(g)
    g.group("Models", 1)
    fast = g.add("ZImageTorchCompile", 2, "Torch Compile", {"mode": "default", "dynamic": False}, {"dit": dit[0]},
                 size=(360, 110))
    pos = prompt(g, te, FOX)
    lat = g.add("ZImageEmptyLatent", 2, "Image Size",
                {"resolution": "custom", "width": 1024, "height": 1024, "batch_size": 1}, size=(440, 160))
    samp = sampler(g, fast[0], pos, lat, 3, seed=7)
    decode_save(g, vae, samp, 3, "z-image-8gb")
    return g
