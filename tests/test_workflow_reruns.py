"""Partial reruns: after a change, ``snakemake -n`` plans exactly the jobs that depend on it.

How the up-to-date state is built, and why it is honest: Snakemake decides what to rerun from file
modification times, file sizes (files under ``--max-checksum-file-size``, 1 MB by default, are compared
by checksum instead), and the metadata it records for every finished job (input files, params, rule
code, input checksums). It never reads what the outputs mean. So the fixture creates every output of
the workflow as a placeholder, then runs ``snakemake --touch --forceall``: in Snakemake 9.27 a touched
job goes through the same post-processing as a real one and records the same metadata (the fresh-state
test checks a record for every output, and the parameter tests fail if params are not recorded).
Placeholder checkpoints are 1 MiB, above the checksum limit like every real checkpoint, so they are
compared by modification time; the JSON outputs and the package sources are small and compared by
checksum, as in a real run. Running the real stages, even at a tiny size, would take minutes of CPU
for the same decisions.

The workflow (Snakefile, rules, workflow helpers, the package sources the rules declare as inputs, a
config) is copied once into one directory; each test restores that directory from a snapshot taken
with preserved modification times. The directory stays the same because the recorded inputs include
the absolute paths of the package sources: another path would be "a changed set of input files".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # real snakemake runs / several processes per test

ROOT = Path(__file__).resolve().parents[1]
# Rules call `python -m vlmerge.<stage>`: the interpreter running the tests must be the one they find.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
TASKS = ("vqa", "coco", "f30k", "nlvr2")
MERGES = ("interpolation", "arithmetic", "regmean")
MS = "results/pretrain/ms_modality_specific.safetensors"
CHECKPOINT_BYTES = 1 << 20  # above Snakemake's default --max-checksum-file-size (1,000,000 bytes)


@dataclass(frozen=True)
class Plan:
    jobs: dict[str, int]  # rule -> planned jobs
    outputs: frozenset[str]  # output files of the planned jobs


NOTHING = Plan({}, frozenset())


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(workdir / "Snakefile"), "-d", str(workdir), "-c1", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def summary(workdir: Path) -> list[dict[str, str]]:
    """``snakemake --summary``: one row per output file (output_file, date, rule, ..., status, plan)."""
    lines = snakemake(workdir, "--summary").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    header = lines[start].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[start + 1 :] if "\t" in line]


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run (empty when nothing is to be done)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args)
    jobs: dict[str, int] = {}
    for line in (out.stdout + out.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def plan(workdir: Path) -> Plan:
    """What a plain run would do now: the dry run's job counts and the summary's pending outputs."""
    outputs = frozenset(row["output_file"] for row in summary(workdir) if row["plan"] != "no update")
    return Plan(planned_jobs(workdir), outputs)


def write_config(workdir: Path) -> None:
    """The repository's config with the experiment grid pinned, so the expected job sets below hold."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["merge"]["methods"] = {
        "interpolation": {"method": "interpolation", "params": {"ratio": 0.5}},
        "arithmetic": {"method": "arithmetic", "params": {"lam": 0.5}},
        "regmean": {"method": "regmean", "params": {"alpha": 0.9, "normalize": "mean", "used_experts_only": "task"}},
    }
    config["finetune"]["tasks"], config["finetune"]["baselines"] = list(TASKS), ["ma", "ms"]
    config["report"] = {"ablations": {"sharing": [], "seed_steps": [], "methods": ["interpolation"], "tasks": ["vqa"]}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def write_placeholder(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        content = content.ljust(CHECKPOINT_BYTES, b"\0")
    path.write_bytes(content)


def build_state(workdir: Path) -> list[dict[str, str]]:
    """Copy the workflow, create every output as a placeholder, record metadata with --touch; the outputs."""
    workdir.mkdir()
    shutil.copy2(ROOT / "Snakefile", workdir)
    for folder in ("rules", "workflow", "vlmerge"):
        shutil.copytree(ROOT / folder, workdir / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    write_config(workdir)
    outputs = summary(workdir)
    for row in outputs:
        path = workdir / row["output_file"]
        if row["rule"] == "vocab":  # a directory output
            write_placeholder(path / "vocab.txt", b"[PAD]\n")
        else:
            write_placeholder(path, row["output_file"].encode())
    snakemake(workdir, "--touch", "--forceall")
    return outputs


@dataclass(frozen=True)
class Snapshot:
    workdir: Path
    saved: Path
    outputs: list[dict[str, str]]  # --summary rows of the fresh state


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    base = tmp_path_factory.mktemp("reruns")
    workdir, saved = base / "workflow", base / "snapshot"
    outputs = build_state(workdir)
    shutil.copytree(workdir, saved, symlinks=True)
    return Snapshot(workdir, saved, outputs)


@pytest.fixture
def state(snapshot: Snapshot) -> Path:
    """The up-to-date workflow directory, restored (same path, same mtimes) for every test."""
    shutil.rmtree(snapshot.workdir)
    shutil.copytree(snapshot.saved, snapshot.workdir, symlinks=True)
    return snapshot.workdir


@pytest.fixture
def report(snapshot: Snapshot) -> set[str]:
    """The report stage's outputs (tables and plots of the pinned grid)."""
    return {row["output_file"] for row in snapshot.outputs if row["rule"] == "tables"}


def rewrite(workdir: Path, name: str, content: bytes) -> None:
    """Write ``content`` to ``name`` with a modification time later than every output of the workflow."""
    newest = max(p.stat().st_mtime for folder in ("data", "results") for p in (workdir / folder).rglob("*"))
    path = workdir / name
    path.write_bytes(content)
    os.utime(path, (newest + 1, newest + 1))


def set_config(workdir: Path, key: str, value: object) -> None:
    """Set a dotted ``key`` (``merge.grams.max_samples``) of the copied config to a new value."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    assert node.get(last) != value, key
    node[last] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def checkpoint_files(path: str) -> set[str]:
    """A checkpoint and its JSON sidecar (one job writes both)."""
    return {path, path.replace(".safetensors", ".json")}


def lineage(tasks: tuple[str, ...], methods: tuple[str, ...]) -> set[str]:
    """Fine-tuned checkpoints (with sidecars) and result JSONs of ``methods`` on ``tasks``."""
    files: set[str] = set()
    for task in tasks:
        for method in methods:
            files |= checkpoint_files(f"results/finetune/{task}/{method}.safetensors")
            files.add(f"results/{task}/{method}.json")
    return files


GRAMS = set().union(*(checkpoint_files(f"results/grams/{task}.safetensors") for task in TASKS))
REGMEAN = set().union(*(checkpoint_files(f"results/merged/{task}/regmean.safetensors") for task in TASKS))
MERGED = (
    REGMEAN
    | checkpoint_files("results/merged/interpolation.safetensors")
    | checkpoint_files("results/merged/arithmetic.safetensors")
)
DISTANCE = {"results/distance/ms_modality_specific.json"}


def zeroshot(*methods: str) -> set[str]:
    """Zero-shot retrieval results of ``methods``."""
    return {f"results/zeroshot/{m}.json" for m in methods}


# Everything downstream of the MS checkpoint, but the report: its grams, every merge (all read the MS
# model), its weight distance, the fine-tunes and evaluations of ms and of every merge, and their zero-shot scores.
MS_BRANCH = GRAMS | MERGED | DISTANCE | lineage(TASKS, ("ms", *MERGES)) | zeroshot("ms", *MERGES)
MS_BRANCH_JOBS = {
    "all": 1,
    "grams": 4,
    "merge": 2,
    "merge_per_task": 4,
    "distance": 1,
    "finetune": 16,
    "evaluate": 16,
    "zeroshot_eval": 4,
    "tables": 1,
}
MA_BRANCH = (
    lineage(TASKS, ("ma",))
    | checkpoint_files("results/pretrain/ma.safetensors")
    | checkpoint_files("results/pretrain/seed.safetensors")
)


def test_fresh_state_plans_nothing_and_has_metadata_for_every_output(state: Path, snapshot: Snapshot) -> None:
    assert plan(state) == NOTHING
    # One record per output file: the params, code and input triggers have something to compare with.
    records = list((state / ".snakemake" / "metadata").iterdir())
    assert len(records) == len(snapshot.outputs) > 90


def test_rewritten_ms_checkpoint_reruns_exactly_the_ms_branch(state: Path, report: set[str]) -> None:
    rewrite(state, MS, b"retrained".ljust(CHECKPOINT_BYTES, b"\0"))
    planned = plan(state)
    assert planned.jobs == MS_BRANCH_JOBS
    assert planned.outputs == MS_BRANCH | report
    assert not planned.outputs & MA_BRANCH


@pytest.mark.parametrize(
    ("key", "value", "jobs", "outputs"),
    [
        (
            "merge.methods.interpolation.params.ratio",
            0.3,
            {"all": 1, "merge": 1, "finetune": 4, "evaluate": 4, "zeroshot_eval": 1, "tables": 1},
            checkpoint_files("results/merged/interpolation.safetensors")
            | lineage(TASKS, ("interpolation",))
            | zeroshot("interpolation"),
        ),
        (
            "merge.grams.max_samples",
            500,
            {"all": 1, "grams": 4, "merge_per_task": 4, "finetune": 4, "evaluate": 4, "zeroshot_eval": 1, "tables": 1},
            GRAMS | REGMEAN | lineage(TASKS, ("regmean",)) | zeroshot("regmean"),
        ),
        (
            "pretrain.runs.ma.steps",
            12345,
            {"all": 1, "pretrain": 1, "finetune": 4, "evaluate": 4, "zeroshot_eval": 1, "tables": 1},
            checkpoint_files("results/pretrain/ma.safetensors") | lineage(TASKS, ("ma",)) | zeroshot("ma"),
        ),
        (
            "finetune.settings.vqa.lr",
            1.234e-4,
            {"all": 1, "finetune": 5, "evaluate": 5, "tables": 1},
            lineage(("vqa",), ("ma", "ms", *MERGES)),
        ),
    ],
    ids=["merge-ratio", "grams-samples", "ma-steps", "vqa-lr"],
)
def test_changed_hyper_parameter_reruns_only_its_jobs_and_descendants(
    state: Path, report: set[str], key: str, value: object, jobs: dict[str, int], outputs: set[str]
) -> None:
    set_config(state, key, value)
    assert plan(state) == Plan(jobs, frozenset(outputs | report))


MERGE_JOBS = {
    "all": 1,
    "merge": 2,
    "merge_per_task": 4,
    "finetune": 12,
    "evaluate": 12,
    "zeroshot_eval": 3,
    "tables": 1,
}


@pytest.mark.parametrize(
    ("source", "jobs", "outputs"),
    [
        ("vlmerge/merge/cli.py", MERGE_JOBS, MERGED | lineage(TASKS, MERGES) | zeroshot(*MERGES)),
        # Modules a stage reaches only indirectly: the gram file format (grams and merge stages) and the
        # Lightning trainer factory (pre-training and fine-tuning: everything but the data stage).
        (
            "vlmerge/files/grams.py",
            {**MERGE_JOBS, "grams": 4},
            GRAMS | MERGED | lineage(TASKS, MERGES) | zeroshot(*MERGES),
        ),
        # The merging library is code of the grams, merge and distance stages: the MS branch but ms itself.
        (
            "vlmerge/merging/interpolation.py",
            {**MERGE_JOBS, "grams": 4, "distance": 1},
            MS_BRANCH - lineage(TASKS, ("ms",)) - zeroshot("ms"),
        ),
        ("vlmerge/report/tables.py", {"all": 1, "tables": 1}, set()),
    ],
)
def test_changed_stage_code_reruns_its_jobs_and_descendants(
    state: Path, report: set[str], source: str, jobs: dict[str, int], outputs: set[str]
) -> None:
    rewrite(state, source, (state / source).read_bytes() + b"\n# changed\n")
    assert plan(state) == Plan(jobs, frozenset(outputs | report))


def recorded_inputs(workdir: Path) -> dict[str, tuple[str, set[str]]]:
    """Output file → (rule, the input files Snakemake recorded for its job) from ``--detailed-summary``."""
    lines = snakemake(workdir, "--detailed-summary").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    header = lines[start].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[start + 1 :] if "\t" in line]
    return {r["output_file"]: (r["rule"], set(r["input-file(s)"].split(","))) for r in rows}


STAGE_OF_RULE = {
    "synth": "synth",
    "prepare": "prepare",
    "vocab": "vocab",
    "pretrain": "pretrain",
    "grams": "grams",
    "merge": "merge",
    "merge_per_task": "merge",
    "distance": "distance",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "zeroshot_eval": "zeroshot",
    "tables": "report",
}


def test_every_job_depends_on_every_module_its_stage_imports(state: Path) -> None:
    """Each job's recorded inputs hold the whole import closure of its stage (read with ``ast`` from the
    copied package), so editing any of those modules reruns it; and no module of another stage's room."""
    sys.path.insert(0, str(state))
    try:
        from workflow.imports import LIBRARIES, closure, module_file
    finally:
        sys.path.remove(str(state))
    checked = set()
    for output, (rule, inputs) in recorded_inputs(state).items():
        stage = STAGE_OF_RULE[rule]
        code = {str(p) for p in closure(module_file(f"vlmerge.{stage}.__main__", state), state)}
        assert code <= inputs, (output, sorted(code - inputs)[:5])
        rooms = {p.split("/vlmerge/")[1].split("/")[0].removesuffix(".py") for p in inputs if "/vlmerge/" in p}
        allowed = {stage, *LIBRARIES, "__init__"}
        assert rooms <= allowed, (output, sorted(rooms - allowed))
        checked.add(rule)
    assert checked == set(STAGE_OF_RULE)


def test_touched_source_with_the_same_content_reruns_nothing(state: Path) -> None:
    # Files under 1 MB are compared by checksum, not by modification time.
    rewrite(state, "vlmerge/merge/cli.py", (state / "vlmerge/merge/cli.py").read_bytes())
    assert plan(state) == NOTHING


def test_checkpoint_rewritten_with_identical_content_keeps_results_after_touch(state: Path) -> None:
    """The README recipe: a checkpoint over 1 MB rewritten unchanged looks new; ``--touch`` keeps the results."""
    finetuned, ma = state / "results/finetune/vqa/ms.safetensors", state / "results/finetune/vqa/ma.safetensors"
    before, ma_mtime = finetuned.read_bytes(), ma.stat().st_mtime
    rewrite(state, MS, (state / MS).read_bytes())
    assert planned_jobs(state) == MS_BRANCH_JOBS
    # Snakemake 9.27 applies the modification-time check whatever --rerun-triggers says: no way around it.
    assert planned_jobs(state, "--rerun-triggers", "params", "input", "code", "software-env") == MS_BRANCH_JOBS
    snakemake(state, "--touch")
    assert plan(state) == NOTHING
    assert finetuned.read_bytes() == before
    assert ma.stat().st_mtime == ma_mtime
