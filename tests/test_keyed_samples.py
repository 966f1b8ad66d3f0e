"""KeyedSamples: a sample's random draws are a function of its key, and cost no accelerator seeding."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from vlmerge.train.batches import KeyedSamples


class _Noise(Dataset):
    """Item i: i plus three draws from torch's global generator (as the image transforms draw)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": index + torch.rand(3)}


def test_sample_draws_follow_the_key_and_leave_the_caller_generator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {}
    for index, draw in [(0, 11), (1, 11), (2, 12)]:
        torch.manual_seed(draw)
        expected[index, draw] = index + torch.rand(3)
    samples = KeyedSamples(_Noise())
    torch.manual_seed(99)
    state = torch.get_rng_state()
    # torch.manual_seed also seeds every accelerator (before CUDA starts: a queued seed with a formatted
    # stack, most of a small sample's cost); the CPU generator is the only one the transforms read.
    monkeypatch.setattr(torch, "manual_seed", lambda seed: pytest.fail("KeyedSamples called torch.manual_seed"))
    for key, want in expected.items():
        got = samples[key]
        assert torch.equal(got["x"], want) and got["draw"] == key[1]
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(samples[0, 11]["x"], samples[0, 13]["x"])
