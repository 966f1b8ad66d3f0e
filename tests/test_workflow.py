"""The Snakemake workflow: config validation, the job graph, lint, and the data stage end to end."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from tests.builders import ENV, ROOT, SNAKEMAKE, paper_site, planned_jobs, snakemake, write_config
from vlmerge.data import schema


@pytest.mark.parametrize("overlay", [None, "profiles/slurm/paper.yaml"])
def test_the_configs_are_valid_experiments(overlay: str | None) -> None:
    """config.yaml, alone and under the paper overlay (layered key by key, as Snakemake does)."""
    from snakemake.utils import update_config

    from workflow.config import validated

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if overlay:
        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    resolved = validated(config)
    assert resolved["merge"]["methods"].keys() == config["merge"]["methods"].keys()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"colour": "red"}, "config.data.colour: Extra inputs are not permitted"),
        (
            {"prepare": {"strict": False, "shard_size": "many", "min_answer_count": 9, "rest_val_images": 1}},
            "config.data.prepare.shard_size",
        ),
        ({"datasets": ["coco", "imagenet"]}, "imagenet"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path: Path, override: dict, named: str) -> None:
    out = snakemake(tmp_path, write_config(tmp_path, **override), "-n")
    assert out.returncode != 0
    assert named in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("entry", "spec", "named"),
    [
        ("regmean", {"method": "regmean", "params": {"alpha": 7.0}}, "parameter alpha=7.0: must lie in [0.0, 1.0]"),
        ("regmean", {"method": "regmean", "params": {"alhpa": 1.0}}, "has no parameter(s) ['alhpa']"),
        ("interpolation", {"method": "interpolation", "params": {"ratio": 1.5}}, "parameter ratio=1.5"),
        ("mystery", {"method": "fisher"}, "unknown merge method 'fisher'"),
    ],
)
def test_bad_merge_parameter_stops_the_dry_run_naming_entry_and_key(
    tmp_path: Path, entry: str, spec: dict, named: str
) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["merge"]["methods"][entry] = spec
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, tmp_path / "config.yaml", "-n", "results/vqa/ma.json")
    assert out.returncode != 0
    assert f"config.merge.methods.{entry}" in out.stdout + out.stderr
    assert named in out.stdout + out.stderr


def test_dry_run_plans_the_data_stage(tmp_path: Path) -> None:
    jobs = planned_jobs(tmp_path, write_config(tmp_path), "data")
    assert jobs == {"data": 1, "synth": 1, "prepare": 7, "vocab": 1}


def test_dry_run_plans_the_whole_pipeline(tmp_path: Path) -> None:
    jobs = planned_jobs(tmp_path, write_config(tmp_path))
    # 4 tasks x (ma, ms + 3 merges) fine-tunes and evaluations; RegMean is merged per task; zero-shot retrieval
    # of seed, ma, ms and the 3 merges; one report.
    assert jobs == {
        "all": 1,
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 3,
        "grams": 4,
        "merge": 2,
        "merge_per_task": 4,
        "distance": 1,
        "finetune": 20,
        "evaluate": 20,
        "zeroshot_eval": 6,
        "tables": 1,
    }


def test_regmean_result_builds_only_its_lineage(tmp_path: Path) -> None:
    jobs = planned_jobs(tmp_path, write_config(tmp_path), "results/vqa/regmean.json")
    # seed -> MS -> VQA grams -> merge -> fine-tune -> evaluate; no MA baseline, no other task or merge.
    # (The tokenizer is trained on every dataset's text, hence all seven conversions.)
    assert jobs == {
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 2,
        "grams": 1,
        "merge_per_task": 1,
        "finetune": 1,
        "evaluate": 1,
    }


def test_one_dataset_target_builds_only_its_lineage(tmp_path: Path) -> None:
    jobs = planned_jobs(tmp_path, write_config(tmp_path), "data/arrow/vqa.manifest.json")
    assert jobs == {"synth": 1, "prepare": 1}


def test_real_root_skips_the_generator(tmp_path: Path) -> None:
    (tmp_path / "real_coco").mkdir()  # an external root must exist (checked when the DAG is built)
    config = write_config(tmp_path, datasets=["coco"], raw={"coco": str(tmp_path / "real_coco")})
    jobs = planned_jobs(tmp_path, config, "data")
    assert jobs == {"data": 1, "prepare": 1, "vocab": 1}


@pytest.mark.slow
def test_lint_is_clean() -> None:
    out = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_data_stage_end_to_end(tmp_path: Path) -> None:
    """synth -> prepare (all seven datasets) -> vocab through Snakemake on the tiny size."""
    out = snakemake(tmp_path, write_config(tmp_path), "data", "-c2")
    assert out.returncode == 0, out.stderr[-3000:]
    arrow = tmp_path / "data/arrow"
    for dataset in schema.DATASETS:
        manifest = json.loads((arrow / schema.manifest_name(dataset)).read_text())
        assert manifest["files"], dataset
        for name in [n for n in manifest["files"] if n.endswith(".arrow")]:
            with pa.memory_map(str(arrow / name)) as source:
                table = pa.ipc.open_file(source).read_all()
            assert table.schema.equals(schema.SCHEMAS[dataset]), name
    assert (arrow / schema.TOKENIZER_DIR / "vocab.txt").is_file()
    # Nothing is left to do: a second run plans no job.
    again = snakemake(tmp_path, write_config(tmp_path), "data", "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_every_catalogued_method_is_registered_with_its_parameters() -> None:
    """The workflow plans from the torch-free catalogue; the merge functions are registered against it."""
    from vlmerge.catalog.methods import METHOD_INFO
    from vlmerge.merging import METHODS

    assert METHODS.keys() == METHOD_INFO.keys()
    assert all(METHODS[name].info is info for name, info in METHOD_INFO.items())


def paper_dry_run(tmp_path: Path, *args: str, profile: str = "profiles/slurm", **env: str):
    """``snakemake -n -p --profile <profile> <targets>`` from the repository root, the paper overlay layered
    with a site overlay whose external paths exist (``site="no"``: without it); targets default to
    results/vqa/regmean.json, ``targets="a b"`` names others."""
    configs = [str(ROOT / "config.yaml"), str(ROOT / "profiles/slurm/paper.yaml")]
    targets = env.pop("targets", "results/vqa/regmean.json").split()
    if env.pop("site", "yes") == "yes":
        configs.append(str(paper_site(tmp_path)))
    return subprocess.run(
        [
            *SNAKEMAKE,
            *targets,
            "-n",
            "-p",
            "--profile",
            profile,
            "-d",
            str(tmp_path / "w"),
            *args,
            "--configfile",
            *configs,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**ENV, **env},
    )


def test_slurm_profile_launches_multi_node_pretraining(tmp_path: Path) -> None:
    """The SLURM profile selects the paper-scale config; pre-training starts 6 nodes x 8 ranks through srun."""
    out = paper_dry_run(tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout + out.stderr
    pretrain = next(line for line in text.splitlines() if "python -m vlmerge.pretrain" in line)
    assert "srun --nodes=6 --ntasks-per-node=8 python -m vlmerge.pretrain" in pretrain
    assert "--devices 8 --nodes 6" in pretrain
    settings = stage_settings(pretrain)
    assert settings["preset"] == "base" and settings["strategy"] == "fsdp" and settings["augment"] is True
    assert "mpi=srun" in text and "gres=gpu:8" in text and "--signal=SIGUSR1@300" in text
    # Fine-tuning: one node of 8 ranks, the paper's task settings (none of config.yaml's embedded ones).
    finetune = next(line for line in text.splitlines() if "python -m vlmerge.finetune" in line)
    assert "srun --nodes=1 --ntasks-per-node=8 python -m vlmerge.finetune" in finetune
    assert "--devices 8 --nodes 1" in finetune
    settings = stage_settings(finetune)
    assert settings["task"] == "vqa" and settings["augment"] is True
    assert all(settings[key] is None for key in ("steps", "global_batch", "image_size", "lr"))


def test_the_profile_answers_to_its_short_name_from_the_repository_root(tmp_path: Path) -> None:
    """``snakemake --profile slurm …`` as users type it, once `make setup` linked the profiles into the user's
    Snakemake config directory (here a temporary XDG_CONFIG_HOME); exactly the lineage of the target."""
    config_home = tmp_path / "xdg"
    env = {**ENV, "XDG_CONFIG_HOME": str(config_home)}
    before = paper_dry_run(tmp_path, profile="slurm", XDG_CONFIG_HOME=str(config_home))
    assert before.returncode != 0 and "no profile.yaml (or config.yaml) found" in before.stderr
    linked = subprocess.run(
        [sys.executable, "-m", "workflow.profiles"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert linked.returncode == 0 and (config_home / "snakemake" / "slurm").resolve() == ROOT / "profiles/slurm"
    out = paper_dry_run(tmp_path, "--quiet", "rules", profile="slurm", XDG_CONFIG_HOME=str(config_home))
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = {
        p[0]: int(p[1])
        for p in (line.split() for line in out.stdout.splitlines())
        if len(p) == 2 and p[1].isdigit() and p[0] not in ("total", "job")
    }
    # real raw roots: no synthetic data; seed -> MS -> VQA grams -> RegMean -> fine-tune -> evaluate
    assert jobs == {
        "prepare": 7,
        "vocab": 1,
        "pretrain": 2,
        "grams": 1,
        "merge_per_task": 1,
        "finetune": 1,
        "evaluate": 1,
    }


def test_missing_external_paths_stop_the_dry_run_listing_each(tmp_path: Path) -> None:
    """The paper overlay as shipped names site paths that do not exist here: one line lists them all."""
    out = paper_dry_run(tmp_path, site="no")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("vlmerge: bad configuration")]
    assert len(lines) == 1, out.stderr[-2000:]
    for key in (
        "data.raw.coco=/datasets/coco",
        "data.raw.gcc=",
        "data.tokenizer.bert_vocab=",
        "pretrain.init=/models/beit_base_patch16_224_pt22k_ft22k.pth",
    ):
        assert key in lines[0]


def test_paper_profile_merges_with_the_released_settings(tmp_path: Path) -> None:
    """The paper overlay's main table, as the jobs receive it: interpolation 0.5, arithmetic 0.75 (and the
    released in-place recursion), RegMean alpha 1 on raw sums over the experts each task used upstream
    (NLVR2: all three), grams from a val pass at 224 px with pads counted."""
    targets = " ".join(
        f"results/{t}/{m}.json"
        for t in ("vqa", "nlvr2", "coco")
        for m in ("interpolation", "arithmetic", "regmean", "arithmetic_upstream", "arithmetic_upstream_used")
    )
    out = paper_dry_run(tmp_path, targets=targets)
    assert out.returncode == 0, out.stderr[-2000:]
    merges: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        if "python -m vlmerge.merge " in line:
            words = shlex.split(line.split("python -m vlmerge.merge ", 1)[1].split(">")[0])
            params = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--param")
            merges[words[words.index("--out") + 1]] = params
    assert merges["results/merged/interpolation.safetensors"] == {"ratio": "0.5"}
    assert merges["results/merged/arithmetic.safetensors"] == {"lam": "0.75"}
    assert merges["results/merged/arithmetic_upstream.safetensors"] == {"lam": "0.75", "mode": "upstream_sequential"}
    upstream_used = merges["results/merged/nlvr2/arithmetic_upstream_used.safetensors"]
    assert upstream_used == {"lam": "0.75", "mode": "upstream_sequential", "single_expert": "copy"}
    regmean = {"alpha": "1.0", "normalize": "sum", "unseen": "skip"}
    assert merges["results/merged/nlvr2/regmean.safetensors"] == regmean  # all three experts
    assert merges["results/merged/vqa/regmean.safetensors"] == regmean | {"used_experts_only": "vqa"}
    assert merges["results/merged/coco/regmean.safetensors"] == regmean | {"used_experts_only": "coco"}
    grams = [stage_settings(line) for line in out.stdout.splitlines() if "python -m vlmerge.grams " in line]
    assert len(grams) == 3 and all(
        g
        == {
            "split": "val",
            "max_samples": None,
            "batch_size": 160,
            "include_pad": True,
            "image_size": 224,
            "products": "float32",
        }
        for g in grams
    )


def stage_settings(command: str) -> dict:
    """The JSON a rule hands its stage as ``--config`` (parsed from the shell command line)."""
    words = shlex.split(command)
    return json.loads(words[words.index("--config") + 1])


def test_a_sweep_entry_is_a_method_of_its_own(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["merge"]["methods"]["regmean_alpha0.5"] = {
        "method": "regmean",
        "params": {"alpha": 0.5, "normalize": "mean", "used_experts_only": "task"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tmp_path, path, "results/nlvr2/regmean_alpha0.5.json")
    assert jobs == {
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 2,
        "grams": 1,
        "merge_per_task": 1,
        "finetune": 1,
        "evaluate": 1,
    }
    out = snakemake(tmp_path, path, "results/nlvr2/regmean_alpha0.5.json", "-n", "-p")
    assert "--param alpha=0.5 --param normalize=mean --param used_experts_only=nlvr2" in out.stdout


def ablation_config(tmp_path: Path, **ablations: object) -> Path:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["report"] = {"ablations": ablations}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sharing_ablation_adds_one_ms_run_and_its_merges(tmp_path: Path) -> None:
    # The configured layout (modality_specific) is the main lineage: only attn and ln are new.
    config = ablation_config(
        tmp_path, sharing=["attn", "modality_specific", "ln"], methods=["interpolation", "regmean"], tasks=["vqa"]
    )
    jobs = planned_jobs(tmp_path, config, "ablations")
    # ms_attn, ms_ln from the seed; per layout one interpolation and one VQA RegMean (own grams).
    assert jobs == {
        "ablations": 1,
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 3,
        "grams_ablation": 2,
        "merge": 2,
        "merge_per_task": 2,
        "finetune": 4,
        "evaluate": 4,
    }
    out = snakemake(tmp_path, config, "results/vqa/regmean@ms_ln.json", "-n", "-p")
    runs = [stage_settings(line) for line in out.stdout.splitlines() if "vlmerge.pretrain" in line]
    assert [r["init"] for r in runs if r["sharing"] == "ln"] == ["seed:results/pretrain/seed.safetensors"]
    assert "--ms results/pretrain/ms_ln.safetensors" in out.stdout
    assert "--grams results/grams/vqa@ms_ln.safetensors" in out.stdout


def test_seed_length_ablation_adds_a_seed_and_an_ms_run(tmp_path: Path) -> None:
    config = ablation_config(tmp_path, seed_steps=[50, 150], methods=["arithmetic", "ms"], tasks=["vqa", "nlvr2"])
    jobs = planned_jobs(tmp_path, config, "ablations")
    # seed50 and ms_modality_specific@seed50 (150 is the configured length); arithmetic needs that seed.
    assert jobs == {
        "ablations": 1,
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 2,
        "merge": 1,
        "finetune": 4,
        "evaluate": 4,
    }
    out = snakemake(tmp_path, config, "results/nlvr2/arithmetic@seed50.json", "-n", "-p")
    runs = [stage_settings(line) for line in out.stdout.splitlines() if "vlmerge.pretrain" in line]
    assert {(r["steps"], r["warmup"]) for r in runs if r["sharing"] == "shared"} == {(50, 5)}
    assert [r["init"] for r in runs if r["sharing"] != "shared"] == ["seed:results/pretrain/seed50.safetensors"]
    assert (
        "--ms results/pretrain/ms_modality_specific@seed50.safetensors --param lam=0.5 --seed "
        "results/pretrain/seed50.safetensors" in out.stdout
    )


def test_ablations_add_their_lineages_and_distances_to_the_whole_pipeline(tmp_path: Path) -> None:
    config = ablation_config(tmp_path, sharing=["ffn"], seed_steps=[75], methods=["interpolation"], tasks=["vqa"])
    jobs = planned_jobs(tmp_path, config)
    assert jobs == {
        "all": 1,
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 6,
        "grams": 4,
        "merge": 4,
        "merge_per_task": 4,
        "distance": 3,
        "finetune": 22,
        "evaluate": 22,
        "zeroshot_eval": 6,
        "tables": 1,
    }


def test_unknown_ablation_method_is_an_error(tmp_path: Path) -> None:
    out = snakemake(tmp_path, ablation_config(tmp_path, sharing=["ffn"], methods=["ties"]), "-n")
    assert out.returncode != 0
    assert "report.ablations.methods: ['ties']" in out.stdout + out.stderr


@pytest.mark.slow
def test_over_a_demo_run_checkout_the_paper_plan_is_the_whole_lineage(tmp_path: Path) -> None:
    """A directory where the embedded demo built results/vqa/regmean.json (placeholders with the metadata a
    real run records, made by ``--touch``): the paper profile's plan of the same target is the whole lineage,
    exactly as over an empty directory; no tiny checkpoint, gram file or table is reused by a base job."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    embedded = write_config(tmp_path)
    target = "results/vqa/regmean.json"
    summary = snakemake(workdir, embedded, "--summary", target)
    assert summary.returncode == 0, summary.stderr[-2000:]
    lines = summary.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    header = lines[start].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[start + 1 :] if "\t" in line]
    assert any(row["output_file"] == "results/pretrain/seed.safetensors" for row in rows)
    for row in rows:
        path = workdir / row["output_file"]
        path = path / "vocab.txt" if row["rule"] == "vocab" else path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(row["output_file"].encode().ljust(1 << 20, b"\0"))
    touched = snakemake(workdir, embedded, target, "--touch", "--forceall", "-c1")
    assert touched.returncode == 0, touched.stderr[-2000:]
    assert planned_jobs(workdir, embedded, target) == {}  # the demo's state is complete

    def paper_plan(directory: Path) -> dict[str, int]:
        out = paper_dry_run(directory.parent, "--quiet", "rules", targets=target)
        assert out.returncode == 0, out.stderr[-2000:]
        jobs = {}
        for line in (out.stdout + out.stderr).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
                jobs[parts[0]] = int(parts[1])
        return jobs

    empty = tmp_path / "empty"
    empty.mkdir()
    over_demo, over_nothing = paper_plan(workdir), paper_plan(empty / "w")
    assert over_demo == over_nothing and over_demo["pretrain"] == 2 and over_demo["prepare"] == 7
