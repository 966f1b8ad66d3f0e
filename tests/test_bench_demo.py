"""``python -m vlmerge.bench demo``: a workflow run's time, rule by rule, from its logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmerge.bench import demo
from vlmerge.errors import InputError

# Two cores; job 1 (pretrain) runs 10:00:00-10:01:40 alone, then jobs 2 and 3 (finetune) overlap.
SNAKEMAKE_LOG = """\
Building DAG of jobs...
Provided cores: 2
Rules claiming more threads will be scaled down.

[Mon Nov 30 10:00:00 2026]
rule pretrain:
    output: results/pretrain/seed.safetensors
    log: logs/pretrain/seed.log
    jobid: 1
    reason: Missing output files
    wildcards: run=seed
    resources: tmpdir=/tmp

[Mon Nov 30 10:01:40 2026]
Finished jobid: 1 (Rule: pretrain)
1 of 3 steps (33%) done

[Mon Nov 30 10:01:40 2026]
rule finetune:
    log: logs/finetune/vqa/ma.log
    jobid: 2
    wildcards: task=vqa, method=ma

[Mon Nov 30 10:01:50 2026]
localrule finetune:
    log: logs/finetune/coco/ma.log
    jobid: 3
    wildcards: task=coco, method=ma

[Mon Nov 30 10:02:20 2026]
Finished jobid: 2 (Rule: finetune)

[Mon Nov 30 10:02:40 2026]
Finished jobid: 3 (Rule: finetune)
"""

JOB_LOGS = {
    # start-up 6 s, a loop of 90 s, 4 s more
    "logs/pretrain/seed.log": "10:00:06 INFO x\n10:01:36 INFO p: 150/150 step done in 90.0s\n",
    # start-up 5 s, two loops (training, then an evaluation) of 20 + 5 s
    "logs/finetune/vqa/ma.log": "10:01:45 INFO x\n10:02:10 INFO p: 200/200 step done in 20.0s\nx done in 5.0s\n",
    "logs/finetune/coco/ma.log": "10:01:58 INFO x\n10:02:38 INFO p: done in 30.0s\n",
}


def write_run(root: Path) -> Path:
    log = root / ".snakemake" / "log" / "2026-11-30T100000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text(SNAKEMAKE_LOG)
    for name, text in JOB_LOGS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return log


def test_jobs_rules_and_their_split(tmp_path) -> None:
    run = demo.parse_run(write_run(tmp_path), tmp_path)
    assert run.cores == 2 and run.wall == 160
    jobs = {j.log: j for j in run.jobs}
    seed, vqa, coco = (
        jobs["logs/pretrain/seed.log"],
        jobs["logs/finetune/vqa/ma.log"],
        jobs["logs/finetune/coco/ma.log"],
    )
    assert (seed.rule, seed.seconds, seed.startup, seed.loops) == ("pretrain", 100, 6, 90)
    assert (vqa.rule, vqa.seconds, vqa.startup, vqa.loops) == ("finetune", 40, 5, 25)
    assert (coco.rule, coco.seconds, coco.startup, coco.loops, coco.wildcards) == (
        "finetune",
        50,
        8,
        30,
        "task=coco, method=ma",
    )
    # 10:00:00-10:01:50 one job, 10:01:50-10:02:20 two, 10:02:20-10:02:40 one
    assert demo.concurrency(run) == {1: 130, 2: 30}
    text = demo.report(run)
    assert "3 jobs on 2 cores, 2 min 40 s wall" in text
    assert "job-seconds 190 = 59% of cores × wall" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[4:]}
    assert rows["finetune"] == ["2", "90", "13", "55", "22", "6.5"]
    assert rows["pretrain"] == ["1", "100", "6", "90", "4", "6.0"]
    assert rows["total"] == ["3", "190", "19", "145", "26"]


def test_the_newest_log_is_read_and_a_missing_one_is_named(tmp_path, monkeypatch, capsys) -> None:
    with pytest.raises(InputError, match="no Snakemake log under .*run the workflow first"):
        demo.newest_log(tmp_path)
    write_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    demo.run()
    assert "3 jobs on 2 cores" in capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # an explicit log: job logs are read beside its .snakemake/
    demo.run(str(tmp_path / ".snakemake" / "log" / "2026-11-30T100000.snakemake.log"))
    assert "  pretrain              1     100          6       90" in capsys.readouterr().out


def test_a_run_against_a_baseline_run(tmp_path, capsys) -> None:
    """``--against``: both reports, then job-seconds rule by rule and the wall time as ratios of the baseline's."""
    base_log = write_run(tmp_path / "before")
    this_log = write_run(tmp_path / "after")
    # after: pretrain ends at 10:00:50 instead of 10:01:40, and the coco fine-tune never finishes
    text = this_log.read_text().replace("[Mon Nov 30 10:02:40 2026]\nFinished jobid: 3", "")
    this_log.write_text(text.replace("10:01:40 2026]\nFinished", "10:00:50 2026]\nFinished"))
    text = demo.compare(demo.parse_run(this_log, tmp_path / "after"), demo.parse_run(base_log, tmp_path / "before"))
    lines = text.splitlines()
    # after: pretrain 10:00:00-10:00:50, finetune vqa 10:01:40-10:02:20, coco 0 s (unfinished)
    assert lines[0] == (
        "against 2026-11-30T100000.snakemake.log: wall 140 s vs 160 s (x0.88), job-seconds 90 vs 190 (x0.47)"
    )
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows == {"pretrain": ["50", "100", "x0.50"], "finetune": ["40", "90", "x0.44"]}
    demo.run(str(this_log), str(base_log))
    out = capsys.readouterr().out
    assert out.count("jobs on 2 cores") == 2 and "baseline workflow run" in out and lines[0] in out


def test_a_missing_baseline_is_named_without_a_traceback(tmp_path, capsys) -> None:
    from vlmerge.bench.__main__ import main

    log = write_run(tmp_path)
    assert main(["demo", "--log", str(log), "--against", str(tmp_path / "nope.log")]) == 2
    assert "--against " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["merge", "--against", str(log)])  # a usage error: --against goes with demo alone
