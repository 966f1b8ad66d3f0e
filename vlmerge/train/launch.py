"""Process geometry of a training rule (``pretrain.launch``, ``finetune.launch`` in config.yaml). No torch.

``launcher: srun`` makes the rule start ``srun --nodes N --ntasks-per-node T python -m ...`` itself (see
docs/slurm.md for why the geometry is written out); ``local`` runs one process.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlmerge.runtime.settings import Settings


class LaunchSettings(Settings):
    """How many processes a training job starts, and how."""

    launcher: Literal["local", "srun"] = Field(description="local: one process; srun: the rule starts the ranks")
    nodes: int = Field(ge=1, description="nodes")
    devices: int = Field(ge=1, description="processes (GPUs) per node")
    threads: int = Field(ge=1, description="CPU threads per process")
