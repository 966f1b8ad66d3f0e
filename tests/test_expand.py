"""expand_experts: a shared (MA) state dict copied into every expert gives the same model (the paper's W⁰)."""

from __future__ import annotations

import pytest
import torch

from tests.builders import SMALL
from vlmerge.model import CheckpointError, Modality, Sharing, VLModel, expand_experts, model_config

CONFIG = model_config("tiny", **SMALL)


def random_ma() -> VLModel:
    torch.manual_seed(0)
    model = VLModel(CONFIG, "shared").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def outputs(model: VLModel) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 50, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    images = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        text, text_in = model.encode_text(ids, mask, return_fusion_input=True)
        image, image_in = model.encode_image(images, return_fusion_input=True)
        return [
            text,
            image,
            model.encode_pair(ids, mask, images),
            model.fuse_unimodal(text_in, mask, Modality.L),
            model.fuse_unimodal(image_in, None, Modality.V),
        ]


@pytest.mark.parametrize("sharing", [s for s in Sharing if s is not Sharing.SHARED])
def test_expanded_model_equals_its_source(sharing):
    ma = random_ma()
    ma_state = ma.state_dict()
    before = {k: v.clone() for k, v in ma_state.items()}
    ms_state = expand_experts(ma_state, CONFIG, sharing)
    assert ma_state.keys() == before.keys() and all(torch.equal(ma_state[k], before[k]) for k in before)
    ms = VLModel(CONFIG, sharing).eval()
    ms.load_state_dict(ms_state, strict=True)
    for got, want in zip(outputs(ms), outputs(ma)):
        torch.testing.assert_close(got, want)
    # Each expert owns its copy: training one must not move another (and safetensors rejects shared storage).
    pointers = [v.data_ptr() for k, v in ms_state.items() if k.startswith("transformer.blocks.")]
    assert len(pointers) == len(set(pointers))


def test_expansion_copies_into_the_right_experts():
    ma_state = random_ma().state_dict()
    ms_state = expand_experts(ma_state, CONFIG, "modality_specific")
    qkv = ma_state["transformer.blocks.0.attn.qkv.weight"]
    assert torch.equal(ms_state["transformer.blocks.0.attn.v.qkv.weight"], qkv)
    assert torch.equal(ms_state["transformer.blocks.0.attn.l.qkv.weight"], qkv)
    assert "transformer.blocks.0.attn.vl.qkv.weight" not in ms_state  # below F: no vl expert
    assert torch.equal(ms_state["transformer.blocks.2.mlp.vl.fc2.bias"], ma_state["transformer.blocks.2.mlp.fc2.bias"])
    assert torch.equal(ms_state["transformer.blocks.1.gamma_1"], ma_state["transformer.blocks.1.gamma_1"])
    assert "transformer.blocks.1.attn.qkv.weight" not in ms_state
    assert expand_experts(ma_state, CONFIG, "shared").keys() == ma_state.keys()


def test_expanding_twice_is_an_error():
    ms_state = expand_experts(random_ma().state_dict(), CONFIG, "attn")
    with pytest.raises(CheckpointError, match=r"transformer\.blocks\.0\.norm1\.weight"):
        expand_experts(ms_state, CONFIG, "attn")
