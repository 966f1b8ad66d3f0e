"""Visual Genome: ``images/VG_100K{,_2}/<id>.jpg`` and ``annotations/region_descriptions.json``."""

from __future__ import annotations

from typing import Any

from vlmerge.data.synth.captions import region_phrase
from vlmerge.data.synth.job import Job, Written, write_json
from vlmerge.data.synth.render import object_box
from vlmerge.data.synth.scenes import sample_scene

_ID_SPAN = 2_500_000


def write_vg(job: Job) -> Written:
    """One region per object, its box the object's pixel bounding box; images split over both folders."""
    rng = job.rng("train")
    entries: list[dict[str, Any]] = []
    region_id = 1 + rng.randrange(1000)
    for image_id in sorted(job.ids("train", 1, _ID_SPAN)):
        scene = sample_scene(rng)
        folder = "VG_100K" if rng.random() < 0.6 else "VG_100K_2"
        job.sink.save(job.root / "images" / folder / f"{image_id}.jpg", scene)
        regions = []
        for obj in scene.objects:
            x0, y0, x1, y1 = object_box(obj, job.sink.image_size)
            regions.append(
                {
                    "region_id": region_id,
                    "width": x1 - x0 + 1,
                    "height": y1 - y0 + 1,
                    "image_id": image_id,
                    "phrase": region_phrase(obj, rng),
                    "y": y0,
                    "x": x0,
                }
            )
            region_id += 1
        entries.append({"regions": regions, "id": image_id})
    write_json(job.root / "annotations" / "region_descriptions.json", entries)
    region_count = sum(len(e["regions"]) for e in entries)
    return Written(counts={"train": {"images": len(entries), "regions": region_count}})
