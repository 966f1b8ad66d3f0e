"""Map-style datasets over memory-mapped ViLT Arrow tables, one module per dataset kind."""

from vlmerge.data.readers.captions import CaptionPairs
from vlmerge.data.readers.nlvr2 import NLVR2Dataset
from vlmerge.data.readers.retrieval import ImageSide, RetrievalDataset, TextSide
from vlmerge.data.readers.table import SKIP_SHA256_ENV, ArrowTables, ReaderError, flat_index, open_ipc, verify_table
from vlmerge.data.readers.vqa import VQADataset

__all__ = [
    "SKIP_SHA256_ENV",
    "ArrowTables",
    "CaptionPairs",
    "ImageSide",
    "NLVR2Dataset",
    "ReaderError",
    "RetrievalDataset",
    "TextSide",
    "VQADataset",
    "flat_index",
    "open_ipc",
    "verify_table",
]
