"""ComfyUI's own ControlNet nodes on our MODEL in the real server: ModelPatchLoader + ZImageFunControlnet on
ZImageDiTLoader -> ZImageDiTToModel give KSampler the image they give on UNETLoader's native model (<= 1/255).

ComfyUI builds a Z-Image model only from a 3840-wide DiT and a ZImage_Control only 3840 wide, so both files are
full-width and random: a DiT with one main layer (bf16, ~2 GB) and a ControlNet of the lite layout (3 control
layers + 2 refiner blocks, bf16, ~2 GB). ZImageFunControlnet needs a ComfyUI VAE: a full-size random Flux VAE
(native VAELoader needs the real shapes). One graph runs both paths on the session's server.
"""
from pathlib import Path

import numpy as np
import pytest
import workflow_support as ws
from conftest import TINY_TE as TE
from conftest import WIDE_DIT as DIT
from conftest import WIDE_VAE as VAE
from PIL import Image

PROMPT = "a red fox in the snow at sunrise"
SIZE = 64
CN = "cn_wide_lite.safetensors"


@pytest.fixture(scope="module")
def server(wide_models, tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    from zimage_core.adapters.controlnet import ControlNetConfig
    from zimage_core.tiny.controlnet import random_controlnet_state

    host = wide_models
    d = tmp_path_factory.mktemp("cn_server")
    ccfg = ControlNetConfig(dim=3840, n_heads=30, ffn_dim=10240, control_in_dim=33, n_control_layers=3,
                            variant="refiner")
    save_file(random_controlnet_state(ccfg, seed=2, dtype=torch.bfloat16), str(d / CN))
    host.put_model("model_patches", CN, d / CN)
    ws.write_example_image(Path(host.input_dir) / "cn_control.png", SIZE)
    try:
        yield host
    finally:
        host.remove_model("model_patches", CN)
        (d / CN).unlink(missing_ok=True)
        host.free()  # the wide models leave the shared server's memory


def _png(server, entry, node):
    files = server.output_files(entry, node)
    assert len(files) == 1, entry.get("outputs")
    return np.asarray(Image.open(files[0]).convert("RGB")).astype(np.int16)


def test_zimage_fun_controlnet_on_our_model_equals_it_on_the_native_model(server):
    def branch(model_node, tag, control=True):
        k = {"model": [model_node, 0]}
        nodes = {}
        if control:
            nodes[f"{tag}c"] = {"class_type": "ZImageFunControlnet",
                                "inputs": {"model": [model_node, 0], "model_patch": ["20", 0], "vae": ["21", 0],
                                           "strength": 1.0, "image": ["22", 0]}}
            k = {"model": [f"{tag}c", 0]}
        nodes[f"{tag}k"] = {"class_type": "KSampler",
                            "inputs": {**k, "seed": 3, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                                       "scheduler": "simple", "positive": ["4", 0], "negative": ["12", 0],
                                       "latent_image": ["5", 0], "denoise": 1.0}}
        nodes[f"{tag}d"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}k", 0], "vae": ["21", 0]}}
        nodes[f"{tag}s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{tag}d", 0], "filename_prefix": tag}}
        return nodes

    g = {
        "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": DIT, "weight_dtype": "auto"}},
        "2": {"class_type": "ZImageTextEncoderLoader",
              "inputs": {"text_encoder_name": TE, "dtype": "auto", "device": "default"}},
        "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "6": {"class_type": "ZImageDiTToModel", "inputs": {"dit": ["1", 0]}},
        "11": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}},
        "12": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["4", 0]}},
        "20": {"class_type": "ModelPatchLoader", "inputs": {"name": CN}},
        "21": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "22": {"class_type": "LoadImage", "inputs": {"image": "cn_control.png"}},
        **branch("6", "ours"), **branch("11", "native"), **branch("6", "plain", control=False),
    }
    entry = server.run(g, timeout=1500)
    ours, native, plain = (_png(server, entry, f"{t}s") for t in ("ours", "native", "plain"))
    assert native.std() > 5
    assert np.abs(plain - native).max() > 10  # the control matters
    assert np.abs(ours - native).max() <= 1



def test_nag_model_node_refuses_comfyuis_native_model_and_the_server_keeps_serving(server):
    """ZImageNAGModel patches this pack's DiT only: given UNETLoader's native Z-Image MODEL it fails with a message
    that names the node input and says what to use instead (not a traceback from inside the sampler), and the
    same graph with our MODEL then runs on the same server."""
    from comfyui_host import ExecutionError

    def graph(model):
        return {
            "1": {"class_type": "ZImageDiTLoader", "inputs": {"dit_name": DIT, "weight_dtype": "auto"}},
            "6": {"class_type": "ZImageDiTToModel", "inputs": {"dit": ["1", 0]}},
            "11": {"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}},
            "2": {"class_type": "ZImageTextEncoderLoader",
                  "inputs": {"text_encoder_name": TE, "dtype": "auto", "device": "default"}},
            "4": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": PROMPT}},
            "7": {"class_type": "ZImageTextEncode", "inputs": {"text_encoder": ["2", 0], "text": "blurry, watermark"}},
            "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
            "30": {"class_type": "ZImageNAGModel", "inputs": {"model": [model, 0], "negative": ["7", 0], "scale": 5.0,
                                                             "tau": 2.5, "alpha": 0.25}},
            "31": {"class_type": "KSampler", "inputs": {"model": ["30", 0], "seed": 3, "steps": 1, "cfg": 1.0,
                                                        "sampler_name": "euler", "scheduler": "simple",
                                                        "positive": ["4", 0], "negative": ["4", 0],
                                                        "latent_image": ["5", 0], "denoise": 1.0}},
            "32": {"class_type": "SaveLatent", "inputs": {"samples": ["31", 0], "filename_prefix": "nag_model"}},
        }

    native = graph("11")
    del native["1"], native["6"]
    with pytest.raises(ExecutionError) as ei:
        server.run(native, timeout=900)
    err = server.execution_error(ei.value.entry)
    assert err["node_type"] == "ZImageNAGModel", err
    msg = err["exception_message"]
    assert "ZImageNAGModel 'model'" in msg and "native Lumina2" in msg and "ZImageDiTToModel" in msg, msg
    ours = graph("6")
    del ours["11"]
    assert server.run(ours, timeout=900)["status"]["status_str"] == "success"
