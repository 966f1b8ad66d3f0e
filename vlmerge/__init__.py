"""vlmerge: merging modality-specific vision-language transformers.

Reproduces *An Empirical Study of Multimodal Model Merging* (Sung et al., EMNLP Findings 2023,
https://arxiv.org/abs/2304.14933). Every pipeline stage is a module run as ``python -m vlmerge.<stage>``.
"""

__version__ = "0.1.0"
