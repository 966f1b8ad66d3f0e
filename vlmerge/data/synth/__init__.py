"""Synthetic raw datasets in the published layouts, so the real converters run with no download (docs/overview.md).

Scenes of 1-4 coloured shapes on a 3x3 grid are rendered as images and described by captions, VQA
questions with ten human answers, NLVR2 true/false statements and VG region phrases, then written as
COCO/F30K (Karpathy), VQAv2, NLVR2, Visual Genome, SBU and GCC publish them (docs/raw-formats.md).
"""

from vlmerge.data.synth.errors import SynthError
from vlmerge.data.synth.generate import MARKER, SUMMARY, generate
from vlmerge.data.synth.sizes import SIZES, SPLITS

__all__ = ["MARKER", "SIZES", "SPLITS", "SUMMARY", "SynthError", "generate"]
