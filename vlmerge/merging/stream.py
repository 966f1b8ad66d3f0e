"""Merge inputs read tensor by tensor from their safetensors files, never a whole state dict at once.

A :class:`TensorFile` reads a file lazily (:class:`SafetensorsReader`): names and shapes come from its
header, a tensor is read when a method asks for it and is checked for NaN/Inf on its first read.
:class:`ExpertView` and :class:`BaseView` present the per-expert and seed tensors in the shapes the
methods take (:mod:`vlmerge.merging.registry`), holding only the last few key groups they served, so
a merge keeps its output (MA-sized) plus about one group of inputs in memory. The checks of
:mod:`vlmerge.merging.validate` are repeated here from the headers, with the same messages.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from vlmerge.merging.errors import GramsError, MergeError
from vlmerge.merging.grams import GramStats
from vlmerge.merging.keys import KeyGroup, linear_slot
from vlmerge.merging.validate import check_ms_keys, is_finite
from vlmerge.model import ExpertLayout, Modality, Sharing, detect_sharing
from vlmerge.model.errors import CheckpointError

# Key groups an ExpertView keeps after serving them: a method that reads a weight and then its biases
# (exact-bias RegMean) finds the weight again without a second read.
CACHED_GROUPS = 3


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsReader:
    """A safetensors file read one tensor at a time, each through a mapping of its own bytes (its header
    parsed once).

    ``safe_open`` maps the whole file, and every page a read touches stays in the process's resident set
    while the mapping lives: streaming a file through it ends with the file's size resident. A mapping
    per tensor lives only as long as that tensor. Call after the file has passed ``safe_open``'s own
    header checks (``verify_state``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        with open(self.path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        header.pop("__metadata__", None)
        self._start = 8 + size
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for key, entry in header.items():
            if entry["dtype"] not in _DTYPES:
                raise MergeError(f"{self.path}: {key} has dtype {entry['dtype']}, which merging does not read")
            begin, end = entry["data_offsets"]
            self._entries[key] = (_DTYPES[entry["dtype"]], tuple(entry["shape"]), int(begin), int(end))

    def keys(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def read(self, key: str) -> torch.Tensor:
        """The tensor over a private (copy-on-write) mapping of its bytes alone, unmapped when the tensor
        and its views are freed: its pages come from the page cache when first touched, with no copy and
        no fresh zeroed pages; a write to it copies the page it touches and never reaches the file. Each
        live mapping holds a duplicate of the file's descriptor (CPython's mmap); a merge holds a few dozen
        at once (the copied keys of its output and the cached groups)."""
        dtype, shape, begin, end = self._entries[key]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        start = self._start + begin
        skip = start % mmap.ALLOCATIONGRANULARITY
        with open(self.path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < start + end - begin:
                raise MergeError(f"{self.path}: {key} ends past the end of the file (truncated)")
            mapped = mmap.mmap(fh.fileno(), skip + end - begin, offset=start - skip, access=mmap.ACCESS_COPY)
        # The tensor holds the mapping (frombuffer keeps its buffer alive): it is unmapped with the tensor.
        data = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin, offset=skip)
        return data.view(dtype).reshape(shape)

    def gather(self, key: str, index: torch.Tensor) -> torch.Tensor:
        """The values at flat positions ``index`` (int64, in range), read through a mapping of this
        tensor's bytes alone, unmapped before returning: the pages it touches come from the page cache
        (no copy of the tensor, no fresh pages) and none stays in the process's resident set."""
        dtype, _, begin, end = self._entries[key]
        size = torch.empty((), dtype=dtype).element_size()
        if end == begin:
            return torch.empty(0, dtype=dtype)[index]
        start = self._start + begin
        skip = start % mmap.ALLOCATIONGRANULARITY
        with (
            open(self.path, "rb") as fh,
            mmap.mmap(fh.fileno(), skip + end - begin, offset=start - skip, access=mmap.ACCESS_READ) as mapped,
        ):
            raw = np.frombuffer(mapped, dtype=_INTS[size], count=(end - begin) // size, offset=skip)
            try:
                picked = raw[index.numpy()]  # a copy
            finally:
                del raw  # the mapping closes only once no array refers to it
        return torch.from_numpy(picked).view(dtype)


# Integer types of each element size: gathered bytes are viewed back as the tensor's dtype.
_INTS = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


class TensorFile:
    """Tensors of one safetensors file read on demand; ``what`` names the file in errors
    ("MS state dict", "seed state dict"). Every tensor is checked finite the first time it is read.

    :meth:`prefetch` reads (and checks) the tensors a merge will ask for next on a background thread
    while it computes on the current ones; the views below call it with the next key group.
    """

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self._reader = SafetensorsReader(path)
        self.what = what
        self._names = self._reader.keys()
        self._shapes = {k: self._reader.shape(k) for k in self._names}
        self._checked: set[str] = set()
        self._pending: dict[str, Future[tuple[torch.Tensor, bool]]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def prefetch(self, keys: Iterable[str]) -> None:
        """Start reading ``keys`` in the background; a pending read of any other key is dropped (at most
        one group of tensors waits in memory)."""
        wanted = [k for k in keys if k in self._shapes]
        for key in set(self._pending) - set(wanted):
            self._pending.pop(key).cancel()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        for key in wanted:
            if key not in self._pending:
                self._pending[key] = self._pool.submit(self._read_checked, key, key not in self._checked)

    def _read_checked(self, key: str, check: bool) -> tuple[torch.Tensor, bool]:
        tensor = self._reader.read(key)
        return tensor, is_finite(tensor) if check else True

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __contains__(self, key: object) -> bool:
        return key in self._shapes

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def gather(self, key: str, index: torch.Tensor) -> torch.Tensor:
        """``key``'s values at flat positions ``index``, without reading the tensor (unchecked: a sample)."""
        return self._reader.gather(key, index)

    def load(self, key: str) -> torch.Tensor:
        """A CPU tensor nothing else holds (writes to it stay in this process), finite."""
        pending = self._pending.pop(key, None)
        if pending is not None:
            tensor, finite = pending.result()
        else:
            tensor, finite = self._read_checked(key, key not in self._checked)
        if not finite:
            raise MergeError(f"{self.what}: {key} contains NaN or Inf")
        self._checked.add(key)
        return tensor

    def check_rest(self) -> None:
        """Read and check every tensor not read yet (one at a time): a merge leaves no input unchecked."""
        for key in self._names:
            if key not in self._checked:
                self.load(key)


class _Group(Mapping[Modality, torch.Tensor]):
    """One MA key's experts, each read on first use and kept while the group is cached."""

    def __init__(self, source: TensorFile, keys: Mapping[Modality, str]) -> None:
        self._source, self._keys = source, dict(keys)
        self._loaded: dict[Modality, torch.Tensor] = {}

    def __getitem__(self, m: Modality) -> torch.Tensor:
        if m not in self._loaded:
            self._loaded[m] = self._source.load(self._keys[m])
        return self._loaded[m]

    def __iter__(self) -> Iterator[Modality]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class ExpertView(Mapping[str, Mapping[Modality, torch.Tensor]]):
    """``{MA key: {expert: tensor}}`` over a file, in the order given; iterating reads nothing, each
    group reads its tensors when indexed."""

    def __init__(self, source: TensorFile, groups: Mapping[str, Mapping[Modality, str]]) -> None:
        self._source, self._groups = source, groups
        self._cache: OrderedDict[str, _Group] = OrderedDict()
        order = list(groups)
        self._next = dict(zip(order, order[1:]))

    def shape(self, key: str) -> tuple[int, ...]:
        return self._source.shape(next(iter(self._groups[key].values())))

    def modalities(self, key: str) -> list[Modality]:
        """The experts of ``key``'s group, in the order indexing it lists them, reading nothing."""
        return list(self._groups[key])

    def gather(self, key: str, m: Modality, index: torch.Tensor) -> torch.Tensor:
        """Expert ``m``'s values of ``key`` at flat positions ``index``, reading only the pages they lie on."""
        return self._source.gather(self._groups[key][m], index)

    def __getitem__(self, key: str) -> Mapping[Modality, torch.Tensor]:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        group = _Group(self._source, self._groups[key])
        self._cache[key] = group
        while len(self._cache) > CACHED_GROUPS:
            self._cache.popitem(last=False)
        following = self._next.get(key)
        self._source.prefetch([*self._groups[key].values(), *(self._groups[following].values() if following else ())])
        return group

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)


class BaseView(Mapping[str, torch.Tensor]):
    """The seed's tensors of the merged keys, the last one read kept for the method's next use."""

    def __init__(self, source: TensorFile, keys: tuple[str, ...]) -> None:
        self._source, self._keys, self._known = source, keys, frozenset(keys)
        self._last: tuple[str, torch.Tensor] | None = None
        self._next = dict(zip(keys, keys[1:]))

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._known or key not in self._source:
            raise KeyError(key)
        if self._last is None or self._last[0] != key:
            self._last = None
            following = self._next.get(key)
            self._source.prefetch([key, following] if following else [key])
            self._last = (key, self._source.load(key))
        return self._last[1]

    def gather(self, key: str, index: torch.Tensor) -> torch.Tensor:
        """``key``'s values at flat positions ``index``, reading only the pages they lie on."""
        if key not in self._known or key not in self._source:
            raise KeyError(key)
        return self._source.gather(key, index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def check_ms_file(source: TensorFile, layout: ExpertLayout) -> list[KeyGroup]:
    """:func:`~vlmerge.merging.validate.check_ms_keys` from the header (finiteness: on each read)."""
    return check_ms_keys({k: tuple(source.shape(k)) for k in source.keys()}, layout)


def check_seed_file(seed: TensorFile, experts: ExpertView) -> None:
    """:func:`~vlmerge.merging.validate.check_seed` from the header (finiteness: on each read)."""
    try:
        sharing = detect_sharing(seed.keys())
    except CheckpointError as err:
        raise MergeError(f"seed state dict: {err}") from err
    if sharing is not Sharing.SHARED:
        raise MergeError(f"seed state dict is {sharing.value}, expected a modality-agnostic (shared) one")
    for key in experts:
        if key not in seed:
            raise MergeError(f"seed state dict lacks {key}")
        shape = experts.shape(key)
        if seed.shape(key) != shape:
            raise MergeError(f"seed {key} has shape {seed.shape(key)}, the experts {shape}")


def check_grams_shapes(grams: GramStats, experts: ExpertView) -> None:
    """:func:`~vlmerge.merging.validate.check_grams` without reading a gram (``grams.shapes``)."""
    shapes: Mapping[str, tuple[int, ...]] = getattr(grams, "shapes", None) or {
        k: tuple(v.shape) for k, v in grams.xtx.items()
    }
    for key, tensors in experts.items():
        slot = linear_slot(key)
        if slot is None or len(tensors) < 2:
            continue
        dim = experts.shape(key)[1]
        for m in tensors:
            name = slot.gram_name(m)
            if name not in grams.xtx:
                raise GramsError(
                    f"grams lack {name}, needed to merge layer {slot.layer} (expert {m.value}); "
                    "were they collected for this model and task?"
                )
            if shapes[name] != (dim, dim):
                raise GramsError(
                    f"gram {name} is {shapes[name]} but layer {slot.layer}'s {key} takes {dim} inputs: "
                    "grams from another model"
                )
