"""VQAv2: COCO-named images, ``v2_OpenEnded_mscoco_*_questions.json`` and ``v2_mscoco_*_annotations.json``."""

from __future__ import annotations

from vlmerge.data.synth.annotators import human_answers
from vlmerge.data.synth.job import BalancedCoin, Job, Written, write_json
from vlmerge.data.synth.karpathy import coco_filename
from vlmerge.data.synth.questions import ask
from vlmerge.data.synth.scenes import sample_scene

VQA_SPLITS = ("train", "val", "test", "test-dev")
SUBSETS = {"train": "train2014", "val": "val2014", "test": "test2015", "test-dev": "test-dev2015"}
_ID_SPAN = 1_000_000
_INFO = {
    "description": "Synthetic VQA-style questions about rendered shape scenes",
    "version": "2.0",
    "year": 2017,
    "contributor": "vlmerge.synth",
    "date_created": "2017-04-26",
}
_LICENSE = {
    "name": "Creative Commons Attribution 4.0 International License",
    "url": "http://creativecommons.org/licenses/by/4.0/",
}


def _header(split: str) -> dict:
    return {"info": _INFO, "license": _LICENSE, "data_type": "mscoco", "data_subtype": SUBSETS[split]}


def _split(job: Job, split: str, index: int) -> tuple[list[dict], list[dict]]:
    """Images of one split; returns its question entries and (train/val) annotation entries."""
    subset, rng = SUBSETS[split], job.rng(split)
    coin = BalancedCoin(job.rng(split, "yes/no"))
    questions, annotations = [], []
    for image_id in job.ids(split, 1 + index * _ID_SPAN, _ID_SPAN):
        scene = sample_scene(rng)
        job.sink.save(job.root / subset / coco_filename(subset, image_id), scene)
        n = max(1, job.questions_per_image + rng.choice((-1, 0, 0, 1)))
        for k, q in enumerate(ask(scene, rng, n, coin)):
            # VQA numbers questions image_id * 1000 + k.
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": q.text, "question_id": qid})
            if split != "test":
                annotations.append(
                    {
                        "question_type": q.question_type,
                        "multiple_choice_answer": q.answer,
                        "answers": human_answers(q, rng),
                        "image_id": image_id,
                        "answer_type": q.answer_type,
                        "question_id": qid,
                    }
                )
    return questions, annotations


def write_vqa(job: Job) -> Written:
    """train/val with annotations, test2015 questions only, test-dev a subset of test2015's images."""
    written = Written()
    test_questions: list[dict] = []
    for index, split in enumerate(VQA_SPLITS[:3]):
        questions, annotations = _split(job, split, index)
        name = f"v2_OpenEnded_mscoco_{SUBSETS[split]}_questions.json"
        write_json(job.root / name, {**_header(split), "task_type": "Open-Ended", "questions": questions})
        if split == "test":
            test_questions = questions
        else:
            write_json(
                job.root / f"v2_mscoco_{SUBSETS[split]}_annotations.json",
                {**_header(split), "annotations": annotations},
            )
        written.counts[split] = {"images": job.counts[split], "questions": len(questions)}
    test_ids = sorted({q["image_id"] for q in test_questions})
    dev_ids = set(job.rng("test-dev").sample(test_ids, job.counts["test-dev"]))
    dev = [q for q in test_questions if q["image_id"] in dev_ids]
    write_json(
        job.root / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
        {**_header("test-dev"), "task_type": "Open-Ended", "questions": dev},
    )
    written.counts["test-dev"] = {"images": len(dev_ids), "questions": len(dev)}
    return written
