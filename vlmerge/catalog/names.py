"""The names every part of vlmerge agrees on: tasks, datasets, experts, block parts, sharing layouts.

Plain Python (no torch): the workflow, the config models, the report and the stage CLIs all import
these, and ``snakemake -n`` never imports torch.
"""

from __future__ import annotations

import enum

from vlmerge.errors import ConfigError

# Downstream tasks of the paper (fine-tuning, evaluation, grams).
TASKS = ("vqa", "coco", "f30k", "nlvr2")
# Datasets the data stage converts; pre-training reads the caption corpora.
DATASETS = ("coco", "f30k", "vqa", "nlvr2", "vg", "sbu", "gcc")
PRETRAIN_DATASETS = ("coco", "vg", "sbu", "gcc")
# Retrieval tasks: dual encoders, ranked with recall@K.
RETRIEVAL_TASKS = ("coco", "f30k")


class Modality(enum.Enum):
    """An expert: vision, language, or the vision-language expert of the fusion layers."""

    V = "v"
    L = "l"
    VL = "vl"


class Part(enum.Enum):
    """A block sub-module that a sharing layout may split per expert; the value is its attribute name."""

    NORM1 = "norm1"
    ATTN = "attn"
    NORM2 = "norm2"
    MLP = "mlp"


# Parameter names inside each part, in module order.
PART_PARAMS: dict[Part, tuple[str, ...]] = {
    Part.NORM1: ("weight", "bias"),
    Part.ATTN: ("qkv.weight", "q_bias", "v_bias", "proj.weight", "proj.bias"),
    Part.NORM2: ("weight", "bias"),
    Part.MLP: ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"),
}


class Sharing(enum.Enum):
    """Which parts of every block have one copy per expert (the paper's ablations)."""

    SHARED = "shared"  # modality-agnostic (MA): one set of weights
    MODALITY_SPECIFIC = "modality_specific"  # upstream ``all_moe``
    ATTN = "attn"
    FFN = "ffn"
    LN = "ln"

    @property
    def per_expert(self) -> frozenset[Part]:
        return _PER_EXPERT[self]

    @classmethod
    def parse(cls, value: str | Sharing) -> Sharing:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown sharing layout {value!r}; choose one of {[s.value for s in cls]}") from None


_PER_EXPERT = {
    Sharing.SHARED: frozenset(),
    Sharing.MODALITY_SPECIFIC: frozenset(Part),
    Sharing.ATTN: frozenset({Part.ATTN, Part.NORM1}),
    Sharing.FFN: frozenset({Part.MLP, Part.NORM2}),
    Sharing.LN: frozenset({Part.NORM1, Part.NORM2}),
}


# Sharing layouts of the MS runs (the paper's main layout and its ablations).
MS_SHARINGS = tuple(s.value for s in Sharing if s is not Sharing.SHARED)

# Experts each task's forward routes through in layers >= F (vl-merging's ``only_activate_used_experts``).
TASK_EXPERTS: dict[str, tuple[Modality, ...]] = {
    "coco": (Modality.V, Modality.L),
    "f30k": (Modality.V, Modality.L),
    "retrieval": (Modality.V, Modality.L),
    "vqa": (Modality.VL,),
    "nlvr2": (Modality.VL,),
}


# The package's stages (``python -m vlmerge.<stage>``), named once: the workflow's code inputs and the start-up
# benchmark both list them from here.
STAGE_NAMES = (
    "synth",
    "prepare",
    "vocab",
    "pretrain",
    "grams",
    "merge",
    "distance",
    "finetune",
    "evaluate",
    "zeroshot",
    "report",
    "import",
    "export",
)
