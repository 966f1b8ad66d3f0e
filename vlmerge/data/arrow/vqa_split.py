"""``vqav2_val`` → ``vqav2_trainable_val`` + ``vqav2_rest_val`` (its last ``rest_val_images`` rows).

As ViLT does, the split is taken from the written val table itself, so "the last N images" are the
last N of the rows actually written (sorted by image id), after unreadable images were skipped.
The rows keep ``split = "val"``. The table is streamed back batch by batch from a memory map.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from vlmerge.data.arrow.conversion import Conversion
from vlmerge.data.schema import FILES

log = logging.getLogger(__name__)


def split_val(run: Conversion) -> None:
    """Write the trainable_val and rest_val tables from the already written val table."""
    total = run.splits["val"]["rows"]
    rest = min(run.options.rest_val_images, total)
    if rest < run.options.rest_val_images:
        log.warning("vqav2_val has only %d images: all go to rest_val, none to trainable_val", total)
    questions = {"trainable_val": 0, "rest_val": 0}
    with (
        pa.memory_map(str(run.out / FILES["vqa"]["val"])) as source,
        run.table("trainable_val") as head,
        run.table("rest_val") as tail,
        run.progress("val split", total) as bar,
    ):
        reader = pa.ipc.open_file(source)
        row = 0
        for i in range(reader.num_record_batches):
            for record in reader.get_batch(i).to_pylist():
                split, table = ("trainable_val", head) if row < total - rest else ("rest_val", tail)
                table.write(record)
                questions[split] += len(record["questions"])
                row += 1
                bar.update()
    for split, count in questions.items():
        run.count(split, questions=count)
