"""torch.compile of the DiT blocks: same output as eager, installed only while the patch is applied."""

from __future__ import annotations

import importlib

import pytest
import torch

from zimage_core.adapters.compile import TorchCompile
from zimage_core.errors import InputError
from zimage_core.adapters.patching import PatchedDiT
from zimage_core.tiny.dit import TINY_DIT, random_dit_state
from zimage_core.model.transformer import ZImageDiT


@torch.no_grad()
def test_compiled_blocks_give_the_eager_output_and_leave_the_shared_model_eager():
    model = ZImageDiT(TINY_DIT)
    model.load_state_dict(random_dit_state(TINY_DIT, seed=2))
    model.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 16, 8, 10, generator=g), torch.tensor([0.4, 0.7])
    caps = [torch.randn(7, TINY_DIT.cap_feat_dim, generator=g), torch.randn(20, TINY_DIT.cap_feat_dim, generator=g)]
    expected = model(x, t, caps)
    patch = TorchCompile()
    compiled = PatchedDiT(model).with_patch(patch)
    for _ in range(2):  # the second run reuses the compiled code
        with compiled.applied() as m:
            assert all("forward" in blk.__dict__ for blk in m.layers)
            got = m(x, t, caps)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(patch._compiled) == 2 * TINY_DIT.n_refiner_layers + TINY_DIT.n_layers
    assert not any("forward" in blk.__dict__ for blk in model.layers)  # eager again outside the run


def test_unknown_mode_is_refused(pack):
    with pytest.raises(InputError, match="mode 'turbo'"):
        TorchCompile("turbo")
    node = importlib.import_module(pack.__name__ + ".nodes.speed").ZImageTorchCompile()
    dit = PatchedDiT(ZImageDiT.__new__(ZImageDiT))
    out = node.apply(dit, "max-autotune-no-cudagraphs", True)[0]
    assert out is not dit and out.patches[-1].mode == "max-autotune-no-cudagraphs" and out.patches[-1].dynamic
