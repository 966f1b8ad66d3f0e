"""One result's lineage through Snakemake's SLURM executor on a real two-node cluster on this host.

workflow/slurm-local/start.sh stands the cluster up (root, Debian packages; CI installs them with
workflow/slurm-local/install.sh). The workflow runs with tests/slurm/profile, which selects the
minimal pipeline of tests/slurm/config.yaml: pre-training is the rule's own
``srun --nodes=2 --ntasks-per-node=2`` (4 Lightning DDP ranks on gloo, fake GPUs). While it trains,
the test sends it SIGUSR1 as SLURM would near the time limit: Lightning writes ``hpc_ckpt_1.ckpt``
and requeues the job, and the requeued job must resume there and finish the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "slurm-local"
TARGET = "results/nlvr2/ma.json"
RUN = "ma"  # the pre-training run in TARGET's lineage
STEPS = yaml.safe_load((ROOT / "tests/slurm/config.yaml").read_text())["pretrain"]["runs"][RUN]["steps"]
LINEAGE = {"synth": 1, "prepare": 2, "vocab": 1, "pretrain": 1, "finetune": 1, "evaluate": 1}
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
# Rules call `python -m vlmerge.<stage>` and jobs inherit this environment (sbatch --export=ALL).
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
DEADLINE_S = 480


@dataclass(frozen=True)
class Run:
    workdir: Path
    returncode: int
    output: str  # Snakemake's own stdout + stderr
    pretrain_job: str  # the SLURM job id of the pre-training rule
    job_info: str  # `scontrol show job -d` of that job once the workflow has finished

    def rule_log(self, name: str) -> str:
        return (self.workdir / "logs" / name).read_text()


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not (Path("/usr/sbin") / b).exists()]


def _cannot_run(reason: str) -> None:
    """Skip with the reason in the summary; a failure where SLURM is required (CI: VLMERGE_REQUIRE_SLURM=1)."""
    if os.environ.get("VLMERGE_REQUIRE_SLURM") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster() -> Iterator[None]:
    """The local cluster, started once and stopped at the end of the session."""
    if missing := _missing_binaries():
        _cannot_run(
            f"SLURM is not installed (missing {', '.join(missing)}): as root run {SCRIPTS / 'install.sh'} "
            "(apt-get install munge slurmctld slurmd slurm-client), as `make test` does where it can"
        )
    if os.geteuid() != 0:
        _cannot_run(f"the SLURM cluster test must run as root: it starts {SCRIPTS / 'start.sh'}")
    started = subprocess.run([str(SCRIPTS / "start.sh")], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"start.sh failed:\n{started.stdout}{started.stderr}", pytrace=False)
    yield
    subprocess.run([str(SCRIPTS / "stop.sh")], capture_output=True, timeout=60)


def _pretrain_job(workdir: Path) -> str | None:
    """The plugin names each SLURM log <jobid>.log under .snakemake/slurm_logs/rule_<rule>/<wildcards>/."""
    logs = sorted((workdir / ".snakemake/slurm_logs/rule_pretrain" / RUN).glob("*.log"))
    return logs[0].stem if logs else None


def _training_under_way(workdir: Path) -> bool:
    """A periodic Lightning checkpoint exists: every rank has its SIGUSR1 handler installed by then."""
    return any(workdir.glob(f"work/pretrain/{RUN}-*/checkpoints/step*.ckpt"))


def _signal_pretraining_once_it_trains(snakemake: subprocess.Popen, workdir: Path, deadline: float) -> str:
    """Wait for the pre-training job to train, then send its job step SIGUSR1 (not the batch shell)."""
    while time.monotonic() < deadline:
        job = _pretrain_job(workdir)
        if job is not None and _training_under_way(workdir):
            subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
            return job
        if snakemake.poll() is not None:
            pytest.fail(
                f"the workflow ended (exit {snakemake.returncode}) before pre-training could be "
                f"signalled:\n{(workdir / 'snakemake.out').read_text()[-4000:]}"
            )
        time.sleep(0.5)
    pytest.fail("pre-training did not reach its first checkpoint in time")


@pytest.fixture(scope="module")
def run(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`snakemake --profile tests/slurm/profile TARGET` in a fresh directory, requeueing pre-training once."""
    workdir = tmp_path_factory.mktemp("slurm")
    deadline = time.monotonic() + DEADLINE_S
    # From the repository root, as a user would run it (the profile names config files relative to it).
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--profile",
        "tests/slurm/profile",
        "-d",
        str(workdir),
        TARGET,
    ]
    with open(workdir / "snakemake.out", "w") as out:
        snakemake = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            job = _signal_pretraining_once_it_trains(snakemake, workdir, deadline)
            returncode = snakemake.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if snakemake.poll() is None:  # a failed test: stop the controller (stop.sh cancels its jobs)
                snakemake.terminate()
                try:
                    snakemake.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    snakemake.kill()
                    snakemake.wait()
    # Finished jobs stay in the controller's memory for MinJobAge (600 s): no accounting needed.
    info = subprocess.run(["scontrol", "show", "job", "-d", job], capture_output=True, text=True, timeout=30)
    return Run(workdir, returncode, (workdir / "snakemake.out").read_text(), job, info.stdout)


def test_workflow_writes_a_valid_result(run: Run) -> None:
    assert run.returncode == 0, run.output[-4000:]
    result = json.loads((run.workdir / TARGET).read_text())
    assert (result["task"], result["method"]) == ("nlvr2", "ma")
    assert set(result["splits"]) == {"dev", "test1"}
    for split, scores in result["splits"].items():
        assert 0.0 <= scores["metrics"]["accuracy"] <= 1.0, split
        assert scores["samples"][0] > 0, split
    # Fine-tuned from the pre-trained MA model of this run, after all of its steps.
    parent = result["lineage"]["parent"]
    assert (parent["stage"], parent["checkpoint"], parent["steps"]) == ("pretrain", f"{RUN}.safetensors", STEPS)
    sidecar = json.loads((run.workdir / f"results/pretrain/{RUN}.json").read_text())
    assert sidecar["steps"] == STEPS


def test_every_job_went_through_slurm(run: Run) -> None:
    """Each rule of the lineage left a SLURM log named by its job id, and squeue knows those jobs."""
    root = run.workdir / ".snakemake/slurm_logs"
    logs = sorted(root.rglob("*.log"))
    rules: dict[str, int] = {}
    for log in logs:
        rule = log.relative_to(root).parts[0].removeprefix("rule_")
        rules[rule] = rules.get(rule, 0) + 1
    jobs = {log.stem for log in logs}
    assert rules == LINEAGE
    listed = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i %T %k", "-j", ",".join(sorted(jobs))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split("\n")
    states = {line.split()[0]: line.split()[1] for line in listed if line.strip()}
    assert states == {job: "COMPLETED" for job in jobs}


def test_pretraining_ran_four_ranks_on_two_nodes(run: Run) -> None:
    log = run.rule_log(f"pretrain/{RUN}.log")
    # Rank 0's record; Lightning's SLURMEnvironment checks these against SLURM_NNODES/NTASKS_PER_NODE.
    assert "world size 4 = 2 node(s) x 2 device(s); global rank 0 on node rank 0" in log
    # One world of 4, each rank once: had Lightning missed SLURM, every srun task would start its own.
    members = re.findall(r"Initializing distributed: GLOBAL_RANK: (\d+), MEMBER: \d+/(\d+)", log)
    assert sorted(members) == [(str(rank), "4") for rank in range(4)]
    # SLURM's side: one job of 2 nodes x 2 tasks with 2 fake GPUs on each node.
    assert "NumNodes=2 " in run.job_info and "NumTasks=4 " in run.job_info, run.job_info
    assert "NodeList=n[1-2]" in run.job_info, run.job_info
    assert "TresPerNode=gres:gpu:2" in run.job_info and "JOB_GRES=gpu:4" in run.job_info, run.job_info


def test_pretraining_was_requeued_and_resumed(run: Run) -> None:
    assert re.search(r"\bRestarts=1\b", run.job_info), run.job_info
    slurm_log = next((run.workdir / ".snakemake/slurm_logs/rule_pretrain" / RUN).glob("*.log")).read_text()
    assert "DUE TO JOB REQUEUE" in slurm_log  # slurmstepd's line, kept by --open-mode=append
    work = next((run.workdir / "work/pretrain").glob(f"{RUN}-*"))
    assert (work / "hpc_ckpt_1.ckpt").is_file()  # written by Lightning's SIGUSR1 handler
    # The log of the last attempt, which wrote the checkpoint, resumed from a checkpoint of the first.
    log = run.rule_log(f"pretrain/{RUN}.log")
    resumed = re.search(r"resuming from (\S+)", log)
    assert resumed and Path(resumed.group(1)).parent in (work, work / "checkpoints"), log[-3000:]
    assert f"Restored all states from the checkpoint at {resumed.group(1)}" in log
    remaining = int(re.search(r"PretrainModule: (\d+)/\d+ step", log).group(1))
    assert 0 < remaining < STEPS
    assert f"after {STEPS} steps" in log
