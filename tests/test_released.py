"""Released vl-merging checkpoints as workflow targets (config ``released:``, docs/released.md).

The released files are built from upstream's key names by the helpers of ``test_import_export.py`` (3
layers, width 32), so what the workflow reads from them is what ``python -m vlmerge.import`` detects.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

import tests.test_import_export as upstream
from tests.builders import ENV, planned_jobs, snakemake, write_config
from tests.test_prepare import naive_vilt_vocabulary
from vlmerge.data.schema import VQA_ANSWERS_FILE
from vlmerge.data.tokenizer import load_tokenizer
from vlmerge.errors import ConfigError
from vlmerge.model import Heads
from vlmerge.model.checkpoint import load_state
from workflow.config import check_external, external_paths, validated
from workflow.paths import Paths
from workflow.released import Released, kind_of

# The import stage's settings for these files (the child process has no `pico` preset).
SIZES = {"preset": "tiny", "overrides": {"num_layers": 3, "dim": 32, "num_heads": 2, "mlp_dim": 64}}
DATA_RULES = {"synth", "prepare", "vocab"}


def released_config(tmp_path: Path, entries: dict[str, dict], **data: object) -> Path:
    """The tests' config.yaml with a ``released:`` section (every entry at the files' sizes)."""
    path = write_config(tmp_path, **data)
    config = yaml.safe_load(path.read_text())
    config["released"] = {name: SIZES | entry for name, entry in entries.items()}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four released files (fine-tuned VQA, fine-tuned COCO retrieval, pre-trained MS, merged) and a config."""
    root = tmp_path_factory.mktemp("released")
    upstream.save_upstream(root / "vqa.ckpt", "ma", Heads(vqa_answers=5))
    upstream.save_upstream(root / "coco.ckpt", "ma", Heads(itc=True))
    upstream.save_upstream(root / "ms.ckpt", "ms", Heads.pretraining())
    upstream.save_upstream(root / "merged.ckpt", "merged", Heads.pretraining())
    entries = {
        "vqa_ft": {"path": str(root / "vqa.ckpt")},
        "coco_ft": {"path": str(root / "coco.ckpt"), "task": "coco"},
        "ms": {"path": str(root / "ms.ckpt")},
        "merged": {"path": str(root / "merged.ckpt")},
    }
    return released_config(root, entries)


# ------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Job:
    rule: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    command: str


def dry_run_jobs(text: str) -> list[Job]:
    """The jobs ``snakemake -n -p`` prints: each block's rule, input and output files and shell command."""
    jobs: list[Job] = []
    rule, files, command = None, {"input": (), "output": ()}, ""
    for line in text.splitlines() + ["rule end:"]:
        if match := re.fullmatch(r"(?:local)?rule (\w+):", line):
            if rule is not None:
                jobs.append(Job(rule, files["input"], files["output"], command))
            rule, files, command = match[1], {"input": (), "output": ()}, ""
        elif match := re.fullmatch(r"    (input|output): (.*)", line):
            files[match[1]] = tuple(match[2].split(", "))
        elif line.startswith("Shell command: "):
            command = line.removeprefix("Shell command: ")
    return jobs


def lineage_of(target: str, jobs: list[Job]) -> list[Job]:
    """The jobs ``target`` needs, itself included: its producer and, recursively, the producers of their inputs."""
    producer = {out: job for job in jobs for out in job.outputs}
    needed, files = [], [target]
    while files:
        job = producer.get(files.pop())
        if job is not None and job not in needed:
            needed.append(job)
            files += job.inputs
    return needed


@pytest.fixture(scope="module")
def planned(site: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Job]:
    """One dry run of ``snakemake released`` (every entry's results), read job by job."""
    out = snakemake(tmp_path_factory.mktemp("run"), site, "released", "-n", "-p")
    assert out.returncode == 0, out.stderr[-3000:]
    return dry_run_jobs(out.stdout + out.stderr)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # fine-tuned: imported, evaluated as is
        ("results/vqa/released_vqa_ft.json", ["evaluate", "import_released"]),
        ("results/coco/released_coco_ft.json", ["evaluate", "import_released"]),
        # pre-trained (merged, MA-shaped): imported, fine-tuned, evaluated
        ("results/nlvr2/released_merged.json", ["evaluate", "finetune", "import_released"]),
        ("results/vqa/released_ms.json", ["evaluate", "finetune", "import_released"]),
        # merges of the released MS model: without grams, and RegMean with grams collected from it
        ("results/f30k/released_ms_interpolation.json", ["evaluate", "finetune", "merge", "import_released"]),
        (
            "results/vqa/released_ms_regmean.json",
            ["evaluate", "finetune", "merge_per_task", "grams_released", "import_released"],
        ),
    ],
)
def test_each_kind_plans_exactly_its_lineage(planned: list[Job], target: str, expected: list[str]) -> None:
    """Besides the data stage (synthetic data, Arrow, tokenizer), which every result needs, and nothing
    pre-trained: each job of the chain once."""
    rules = [job.rule for job in lineage_of(target, planned) if job.rule not in DATA_RULES]
    assert sorted(rules) == sorted(expected)
    assert "pretrain" not in {job.rule for job in planned}


def test_regmean_of_the_released_ms_reads_the_imported_model(planned: list[Job], site: Path) -> None:
    chain = {job.rule: job for job in lineage_of("results/vqa/released_ms_regmean.json", planned)}
    imported = chain["import_released"].command
    assert imported.startswith("python -m vlmerge.import --config") and f"--ckpt {site.parent / 'ms.ckpt'}" in imported
    assert chain["import_released"].outputs[0] == "results/released/ms.safetensors"
    assert "--ckpt results/released/ms.safetensors" in chain["grams_released"].command
    assert chain["grams_released"].outputs[0] == "results/grams/vqa@released_ms.safetensors"
    merge = chain["merge_per_task"].command
    assert "--method regmean" in merge and "--ms results/released/ms.safetensors" in merge
    assert "--grams results/grams/vqa@released_ms.safetensors" in merge and "--seed" not in merge
    assert "--init results/merged/vqa/released_ms_regmean.safetensors" in chain["finetune"].command
    assert "--ckpt results/finetune/vqa/released_ms_regmean.safetensors" in chain["evaluate"].command


def test_the_released_target_makes_every_entry_s_results(planned: list[Job]) -> None:
    """vqa_ft and coco_ft on their task; merged on each task; ms on each task as MS and merged by
    interpolation and RegMean (arithmetic needs the seed)."""
    results = {out for job in planned if job.rule == "evaluate" for out in job.outputs}
    methods = ["released_merged", "released_ms", "released_ms_interpolation", "released_ms_regmean"]
    expected = {f"results/{t}/{m}.json" for t in ("vqa", "coco", "f30k", "nlvr2") for m in methods}
    assert results == expected | {"results/vqa/released_vqa_ft.json", "results/coco/released_coco_ft.json"}
    assert sorted(job.outputs[0] for job in planned if job.rule == "import_released") == [
        f"results/released/{n}.safetensors" for n in ("coco_ft", "merged", "ms", "vqa_ft")
    ]


def test_arithmetic_of_a_released_ms_is_refused_with_the_reason(tmp_path: Path, site: Path) -> None:
    out = snakemake(tmp_path, site, "results/vqa/released_ms_arithmetic.json", "-n")
    assert out.returncode == 1
    assert (
        "released_ms_arithmetic: merge.methods.arithmetic (arithmetic) needs the seed model the MS model was "
        "pre-trained from, which was not released" in out.stdout + out.stderr
    )


@pytest.mark.parametrize(
    ("ask", "reason"),
    [
        (lambda r: r.finetune_init("vqa", "released_ms_arithmetic"), "needs the seed model"),
        (lambda r: r.merge_source("released_ms_task_arithmetic"), r"\(task_arithmetic\) needs the seed model"),
        (lambda r: r.evaluated("coco", "released_vqa_ft"), r"released\.vqa_ft \(/.*\) is fine-tuned for vqa; it is "),
        (lambda r: r.evaluated("f30k", "released_coco_ft"), "is fine-tuned for coco"),
        (lambda r: r.finetune_init("vqa", "released_merged_regmean"), "but released.merged .* is pre-trained MA"),
        (lambda r: r.finetune_init("vqa", "released_vqa_ft"), "is fine-tuned for vqa already"),
    ],
)
def test_impossible_lineages_are_refused_with_the_reason(site: Path, ask, reason: str) -> None:
    config = yaml.safe_load(site.read_text())
    config["merge"]["methods"]["task_arithmetic"] = {"method": "task_arithmetic", "params": {}}
    values = validated(config)
    with pytest.raises(ConfigError, match=reason):
        ask(Released(values, Paths(values)))


def test_resolved_lineages_in_process(site: Path) -> None:
    values = validated(yaml.safe_load(site.read_text()))
    released = Released(values, Paths(values))
    assert released.evaluated("vqa", "released_vqa_ft") == "results/released/vqa_ft.safetensors"
    assert released.evaluated("vqa", "released_ms") is None  # fine-tuned here first
    assert released.finetune_init("coco", "released_merged") == "results/released/merged.safetensors"
    assert released.finetune_init("coco", "released_ms_interpolation") is None  # the merge
    assert released.entry_of_variant("released_ms") == "ms" and released.entry_of_variant("ms_attn") is None


def test_without_a_released_target_the_files_are_never_read(tmp_path: Path) -> None:
    """The whole default plan is unchanged by a released entry: a file that is no checkpoint goes unnoticed."""
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    config = released_config(tmp_path, {"bad": {"path": str(tmp_path / "notes.ckpt")}})
    assert "import_released" not in planned_jobs(tmp_path, config)
    values = validated(yaml.safe_load(config.read_text()))
    with pytest.raises(ConfigError, match=r"released\.bad: cannot read .*notes\.ckpt"):
        Released(values, Paths(values)).targets()


# ------------------------------------------------------------------------------------------ the config
def test_released_paths_are_external_inputs_checked_with_the_dag(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["released"] = {"ms": {"path": str(tmp_path / "gone.ckpt"), "vqa_answers": str(tmp_path / "a.json")}}
    values = validated(config)
    assert external_paths(values) == {
        "released.ms.path": str(tmp_path / "gone.ckpt"),
        "released.ms.vqa_answers": str(tmp_path / "a.json"),
    }
    with pytest.raises(ConfigError, match=r"released\.ms\.path=.*gone\.ckpt, released\.ms\.vqa_answers="):
        check_external(values)


def test_method_names_that_would_mean_two_lineages_are_refused(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["released"] = {"ms": {"path": "a.ckpt"}, "ms_interpolation": {"path": "b.ckpt"}}
    with pytest.raises(ConfigError, match=r"released_ms_interpolation"):
        validated(config)


@pytest.mark.parametrize(
    ("heads", "task", "expected"),
    [
        (Heads(vqa_answers=7), None, "vqa"),
        (Heads(nlvr2=True), "nlvr2", "nlvr2"),
        (Heads(itc=True), "f30k", "f30k"),
        (Heads.pretraining(), None, None),
        (Heads(), None, None),  # a bare backbone is pre-trained
        (Heads(itc=True), None, "set released.x.task"),
        (Heads(itc=True), "vqa", "set released.x.task"),
        (Heads(vqa_answers=7), "coco", "released.x.task is coco, but the file is fine-tuned for vqa"),
        (Heads.pretraining(), "vqa", "is pre-trained"),
    ],
)
def test_kind_from_heads(heads: Heads, task: str | None, expected: str | None) -> None:
    if expected is None or expected in ("vqa", "nlvr2", "f30k"):
        assert kind_of(heads, "MS", task, "released.x").task == expected
    else:
        with pytest.raises(ConfigError, match=expected):
            kind_of(heads, "MA", task, "released.x")


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_released_vqa_checkpoint_is_evaluated_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Import → evaluate for real on tiny synthetic VQA data; the result equals evaluating the imported file by hand."""
    config = write_config(tmp_path, datasets=["vqa"])
    out = snakemake(tmp_path, config, "data/arrow/tokenizer", "-c2")
    assert out.returncode == 0, out.stderr[-3000:]
    arrow = tmp_path / "data" / "arrow"
    vocabulary = len(load_tokenizer(arrow / "tokenizer"))
    answers = len(json.loads((arrow / VQA_ANSWERS_FILE).read_text()))
    monkeypatch.setattr(upstream, "VOCAB", vocabulary)  # the file's word embeddings fit the tokenizer
    state = upstream.save_upstream(tmp_path / "vqa.ckpt", "ma", Heads(vqa_answers=answers))
    # The released head's last row k answers everything: its prediction must be ViLT's label k, worked out from
    # the raw annotations by a plain re-implementation of ViLT's write_vqa.py vocabulary.
    raw = tmp_path / "data/raw/synthetic/vqa"
    vilt = naive_vilt_vocabulary(
        [
            json.loads((raw / f"v2_mscoco_{s}_annotations.json").read_text())["annotations"]
            for s in ("train2014", "val2014")
        ],
        yaml.safe_load(config.read_text())["data"]["prepare"]["min_answer_count"],
    )
    assert len(vilt) == answers
    row = answers - 2
    head = torch.load(tmp_path / "vqa.ckpt", weights_only=True)
    head["state_dict"]["vqa_classifier.3.weight"] = torch.zeros_like(state["vqa_classifier.3.weight"])
    head["state_dict"]["vqa_classifier.3.bias"] = torch.zeros(answers).index_fill_(0, torch.tensor([row]), 50.0)
    torch.save(head, tmp_path / "vqa.ckpt")
    config = released_config(tmp_path, {"vqa_ft": {"path": str(tmp_path / "vqa.ckpt")}}, datasets=["vqa"])

    out = snakemake(tmp_path, config, "results/vqa/released_vqa_ft.json", "-c2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "results" / "finetune").exists()

    upstream.run_import(tmp_path / "vqa.ckpt", tmp_path / "by_hand.safetensors")
    imported, meta = load_state(tmp_path / "results" / "released" / "vqa_ft.safetensors")
    by_hand, _ = load_state(tmp_path / "by_hand.safetensors")
    assert sorted(imported) == sorted(by_hand) and all(torch.equal(imported[k], by_hand[k]) for k in by_hand)
    assert meta.heads == Heads(vqa_answers=answers)

    direct = tmp_path / "direct.json"
    argv = ["--task", "vqa", "--method", "released_vqa_ft", "--ckpt", "results/released/vqa_ft.safetensors"]
    argv += ["--arrow", str(arrow), "--tokenizer", str(arrow / "tokenizer"), "--out", str(direct)]
    argv += ["--vqa-annotations", str(tmp_path / "data/raw/synthetic/vqa/v2_mscoco_val2014_annotations.json")]
    done = subprocess.run([sys.executable, "-m", "vlmerge.evaluate", *argv], cwd=tmp_path, env=ENV, timeout=300)
    assert done.returncode == 0
    got = json.loads((tmp_path / "results" / "vqa" / "released_vqa_ft.json").read_text())
    want = json.loads(direct.read_text())
    for key in ("task", "method", "checkpoint", "lineage"):
        assert got[key] == want[key], key
    assert {s: v["metrics"] for s, v in got["splits"].items()} == {s: v["metrics"] for s, v in want["splits"].items()}
    assert got["splits"] and all(v["samples"] for v in got["splits"].values())
    submission = json.loads((tmp_path / "results" / "vqa" / "released_vqa_ft.submission-test-dev.json").read_text())
    assert submission and {entry["answer"] for entry in submission} == {vilt[row]}
