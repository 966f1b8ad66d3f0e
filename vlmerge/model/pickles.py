"""Read pickled PyTorch weight files without letting them run code.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers. Lightning and BEiT
files also pickle a few harmless non-weight objects (hyper-parameter dicts, config dataclasses,
argparse namespaces); those names are read as inert stand-ins. Any other global a file references
(``os.system``, ``builtins.exec``, …) makes us refuse the whole file: nothing it names is called.
"""

from __future__ import annotations

import logging
import os
import types
from typing import Any

import torch

from vlmerge.model.errors import CheckpointError

log = logging.getLogger(__name__)

# name in the pickle -> inert type it is read as. Extend this table for other trusted metadata.
_STAND_INS: dict[str, type] = {
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "argparse.Namespace": types.SimpleNamespace,
    "vilt.moe.config.MOEConfig": types.SimpleNamespace,
    "vilt.custom_ln.config.LNConfig": types.SimpleNamespace,
    "vilt.ufo.config.UFOConfig": types.SimpleNamespace,
}


def load_pickled_weights(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` onto the CPU, refusing any file that references a global outside the allow-list."""
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # pre-1.6 files cannot be scanned: torch.load below still refuses them
        log.debug("could not list the globals of %s: %s", path, err)
        foreign = []
    refused = sorted(name for name in foreign if name not in _STAND_INS)
    if refused:
        raise CheckpointError(
            f"refusing to unpickle {path}: it references {refused}, which could run code "
            "(only tensors and known metadata are read)"
        )
    try:
        with torch.serialization.safe_globals([(stand_in, name) for name, stand_in in _STAND_INS.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    # On bytes that are no pickle the weights-only parser fails with whatever it hits first (IndexError on a
    # text file, KeyError, UnicodeDecodeError …): every failure here means "not a weights file".
    except Exception as err:
        raise CheckpointError(f"cannot read {path} as a weights file: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    """The informative part of torch's long weights-only error message."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or type(err).__name__
