"""Shared test set-up: the ``pico`` model preset, markers, and the SLURM requirement switch.

``pico`` is the smallest multiway model the merging and model tests build (3 layers, width 16); it is
registered in the model presets for this process only, so checkpoints saved with it load in-process.
Tests that start stage processes use ``tiny`` with overrides instead (a child process has no ``pico``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `workflow` is imported by the workflow tests

from vlmerge.model.config import PRESETS  # noqa: E402

PICO = dict(
    num_layers=3,
    dim=16,
    num_heads=2,
    mlp_dim=32,
    image_size=32,
    max_text_len=8,
    vocab_size=50,
    drop_path=0.0,
    embed_dropout=0.0,
)
PRESETS["pico"] = dataclasses.replace(PRESETS["tiny"], preset="pico", **PICO)

# CI sets this: a missing SLURM installation is then a failure instead of a skip.
REQUIRE_SLURM = os.environ.get("VLMERGE_REQUIRE_SLURM") == "1"


def pytest_report_header(config: pytest.Config) -> str:
    return f"vlmerge: SLURM cluster tests {'required' if REQUIRE_SLURM else 'skipped where SLURM cannot run'}"
