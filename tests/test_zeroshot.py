"""The zero-shot retrieval tier: ``python -m vlmerge.zeroshot`` against a naive recomputation on pico models,
its one-line refusal of a checkpoint without contrastive heads, the rule's job sets, and the report's
``zeroshot`` table and sweep plots from fake result JSONs."""

from __future__ import annotations

import csv
import json
import math
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.builders import planned_jobs, write_config
from vlmerge.data.arrow import ConvertOptions, convert
from vlmerge.data.collate import BatchCollator
from vlmerge.data.synth import generate
from vlmerge.data.tokenizer import load_tokenizer, train_wordpiece
from vlmerge.data.transforms import eval_transform
from vlmerge.model import Heads, create_model
from vlmerge.model.checkpoint import save_model
from vlmerge.report.cli import main as report_main
from vlmerge.report.series import Series
from vlmerge.report.sweeps import Sweep
from vlmerge.report.zeroshot import read_zeroshot, sweep_points
from vlmerge.tasks import get_task
from vlmerge.tasks.lineage import weights_sha256
from vlmerge.tasks.shards import Indexed
from vlmerge.vocab.cli import arrow_texts
from vlmerge.zeroshot.cli import main

DATASETS = ("coco", "f30k")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """COCO and F30K test splits of the synthetic generator, converted, and a tokenizer: (arrow, tokenizer)."""
    root = tmp_path_factory.mktemp("zeroshot-data")
    raw, arrow = root / "raw", root / "arrow"
    generate(raw, seed=3, size="tiny", datasets=list(DATASETS), counts={"f30k": {"val": 4, "test": 9}})
    for dataset in DATASETS:
        convert(dataset, raw / dataset, arrow, ConvertOptions())
    return arrow, train_wordpiece(arrow_texts(arrow), root / "tokenizer", vocab_size=200)


def pico(vocab: int, sharing: str, heads: Heads, seed: int):
    torch.manual_seed(seed)
    return create_model("pico", sharing, heads, vocab_size=vocab).eval()


def save(path: Path, model, **extra) -> Path:
    save_model(path, model, extra={"stage": "pretrain", "init": "scratch", **extra})
    return path


def zeroshot_args(data, out: Path, *ckpts: str, extra: tuple[str, ...] = ()) -> list[str]:
    ckpt_args = [a for c in ckpts for a in ("--ckpt", c)]
    return [
        *ckpt_args,
        *("--arrow-dir", str(data[0]), "--tokenizer", str(data[1]), "--out", str(out)),
        *("--batch-size", "3", "--device", "cpu"),
        *extra,
    ]


# --- the reference ------------------------------------------------------------------------------------
def whole_side(task: str, arrow: Path, tokenizer: Path, side: int, max_len: int) -> dict:
    """Every sample of one side of a test split as one batch."""
    dataset = get_task(task).eval_sides(arrow, "test", eval_transform(32))[side]
    return BatchCollator(load_tokenizer(tokenizer), max_len)([Indexed(dataset)[i] for i in range(len(dataset))])


def naive_recalls(model, arrow: Path, tokenizer: Path, task: str) -> dict[str, float]:
    """Features one sample at a time through the model's modules, cosine similarities, ranks by loops;
    a candidate scoring as high as the positive counts above it."""
    images = whole_side(task, arrow, tokenizer, 0, model.config.max_text_len)
    texts = whole_side(task, arrow, tokenizer, 1, model.config.max_text_len)
    with torch.no_grad():
        image_feats = [
            F.normalize(model.itc_image_proj(model.encode_image(image[None])[0, 0]), dim=-1)
            for image in images["image"]
        ]
        text_feats = [
            F.normalize(model.itc_text_proj(model.encode_text(ids[None], mask[None])[0, 0]), dim=-1)
            for ids, mask in zip(texts["text_ids"], texts["text_mask"])
        ]
    owner = [int(i) for i in texts["image_index"]]
    sim = [[float(i @ t) for t in text_feats] for i in image_feats]
    n_images, n_texts = len(sim), len(owner)
    ir_ranks = [
        sum(1 for i in range(n_images) if i != owner[t] and sim[i][t] >= sim[owner[t]][t]) for t in range(n_texts)
    ]
    tr_ranks = []
    for i in range(n_images):
        mine = [t for t in range(n_texts) if owner[t] == i]
        if mine:
            best = max(sim[i][t] for t in mine)
            tr_ranks.append(sum(1 for t in range(n_texts) if owner[t] != i and sim[i][t] >= best))
    out = {f"ir_r{k}": sum(r < k for r in ir_ranks) / len(ir_ranks) for k in (1, 5, 10)}
    return out | {f"tr_r{k}": sum(r < k for r in tr_ranks) / len(tr_ranks) for k in (1, 5, 10)}


def test_recall_equals_a_naive_recomputation_per_dataset_checkpoint(data, tmp_path: Path) -> None:
    """COCO scored with a shared (MA) checkpoint, F30K with a modality-specific one; the JSON says which."""
    arrow, tokenizer = data
    vocab = len(load_tokenizer(tokenizer))
    ma = pico(vocab, "shared", Heads.pretraining(), seed=1)
    ms = pico(vocab, "modality_specific", Heads(itc=True), seed=2)
    ma_path, ms_path = save(tmp_path / "ma.safetensors", ma), save(tmp_path / "ms.safetensors", ms)
    out = tmp_path / "results" / "zeroshot" / "mixed.json"
    assert main(zeroshot_args(data, out, str(ma_path), f"f30k={ms_path}")) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "mixed" and list(result["datasets"]) == list(DATASETS)
    for dataset, model, path in (("coco", ma, ma_path), ("f30k", ms, ms_path)):
        entry = result["datasets"][dataset]
        assert entry["split"] == "test"
        assert entry["checkpoint"]["sha256"] == weights_sha256(path) and entry["checkpoint"]["file"] == path.name
        assert entry["lineage"]["checkpoint_sha256"] == weights_sha256(path)
        assert entry["checkpoint"]["sharing"] == ("shared" if model is ma else "modality_specific")
        expected = naive_recalls(model, arrow, tokenizer, dataset)
        metrics = entry["metrics"]
        assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-12)
        assert metrics["mean_recall"] == pytest.approx(sum(expected.values()) / 6)
        n_images, n_texts = entry["samples"]
        assert entry["baseline"]["ir_r1"] == pytest.approx(1 / n_images) and n_texts > n_images
        assert entry["margin"]["tr_r5"] == pytest.approx(metrics["tr_r5"] - entry["baseline"]["tr_r5"])
    # The recalls are not all equal to chance: the check above compares real rankings.
    assert any(result["datasets"][d]["margin"]["mean_recall"] != 0 for d in DATASETS)


def test_checkpoint_without_itc_heads_is_one_line_and_exit_2(data, tmp_path: Path, capsys) -> None:
    vocab = len(load_tokenizer(data[1]))
    vqa = pico(vocab, "shared", Heads(vqa_answers=5), seed=0)
    path = save(tmp_path / "vqa.safetensors", vqa, stage="finetune", task="vqa")
    out = tmp_path / "zs.json"
    assert main(zeroshot_args(data, out, str(path))) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vlmerge.zeroshot")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vlmerge.zeroshot: error: ") and str(path) in lines[0] and "ITC" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_a_dataset_without_a_checkpoint_is_bad_input(data, tmp_path: Path, capsys) -> None:
    vocab = len(load_tokenizer(data[1]))
    path = save(tmp_path / "seed.safetensors", pico(vocab, "shared", Heads(itc=True), seed=0))
    assert main(zeroshot_args(data, tmp_path / "zs.json", f"coco={path}")) == 2
    assert "no --ckpt for f30k" in capsys.readouterr().err


# --- the workflow -------------------------------------------------------------------------------------
def test_per_task_merge_plans_each_datasets_own_merge(tmp_path: Path) -> None:
    """RegMean (grams, used experts per task) is merged once per retrieval dataset; no fine-tuning."""
    jobs = planned_jobs(tmp_path, write_config(tmp_path), "results/zeroshot/regmean.json")
    assert jobs == {
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 2,
        "grams": 2,
        "merge_per_task": 2,
        "zeroshot_eval": 1,
    }


def test_zeroshot_table_needs_every_method_and_the_switch_drops_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    jobs = planned_jobs(tmp_path, config, "results/tables/zeroshot.md")
    assert jobs == {
        "synth": 1,
        "prepare": 7,
        "vocab": 1,
        "pretrain": 3,
        "grams": 4,
        "merge": 2,
        "merge_per_task": 4,
        "finetune": 20,
        "evaluate": 20,
        "zeroshot_eval": 6,  # seed, ma, ms, interpolation, arithmetic, regmean
        "tables": 1,
    }
    off = yaml.safe_load(config.read_text())
    off["report"]["zeroshot"] = False
    config.write_text(yaml.safe_dump(off))
    jobs = planned_jobs(tmp_path, config, "tables")
    assert "zeroshot_eval" not in jobs and jobs["tables"] == 1


def test_rule_arguments_name_each_datasets_checkpoint() -> None:
    from workflow.ablations import Ablations
    from workflow.merging import Merging
    from workflow.paths import Paths
    from workflow.zeroshot import Zeroshot

    config = yaml.safe_load((Path(__file__).parents[1] / "config.yaml").read_text())
    paths, ablations = Paths(config), Ablations(config)
    zeroshot = Zeroshot(config, paths, Merging(config, paths, ablations))
    assert zeroshot.results() == [f"results/zeroshot/{m}.json" for m in zeroshot.methods]
    assert zeroshot.methods[:3] == ["seed", "ma", "ms"] and set(config["merge"]["methods"]) <= set(zeroshot.methods)
    args = shlex.split(zeroshot.args(SimpleNamespace(method="regmean")))
    ckpts = [args[i + 1] for i, a in enumerate(args) if a == "--ckpt"]
    assert ckpts == ["coco=results/merged/coco/regmean.safetensors", "f30k=results/merged/f30k/regmean.safetensors"]
    args = shlex.split(zeroshot.args(SimpleNamespace(method="ms")))
    sharing = config["pretrain"]["runs"]["ms"]["sharing"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--ckpt"] == [
        f"{d}=results/pretrain/ms_{sharing}.safetensors" for d in DATASETS
    ]
    assert json.loads(args[args.index("--config") + 1])["method"] == "ms"


# --- the report -----------------------------------------------------------------------------------------
METHODS = ("seed", "ma", "ms", "interp_r0.25", "interpolation", "interp_r0.75")
SWEEP = Sweep("interpolation_ratio", "interpolation", "ratio", ("interp_r0.25", "interpolation", "interp_r0.75"))
KEYS = tuple(f"{side}_r{k}" for side in ("tr", "ir") for k in (1, 5, 10))


def write_zeroshot(root: Path, method: str, seed: int, ratio: float | None) -> tuple[Path, dict]:
    """A zero-shot JSON shaped like ``python -m vlmerge.zeroshot`` writes it, with scores from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    datasets = {}
    for dataset in DATASETS:
        metrics = {k: float(torch.rand((), generator=gen)) for k in KEYS}
        node = {"stage": "merge", "merge": {"method": "interpolation", "params": {"ratio": ratio}}} if ratio else {}
        datasets[dataset] = {
            "split": "test",
            "metrics": metrics | {"mean_recall": sum(metrics.values()) / 6},
            "baseline": {k: 0.01 * (i + 1) for i, k in enumerate(KEYS)} | {"mean_recall": 0.035},
            "lineage": node or {"stage": "pretrain"},
        }
    path = root / "zeroshot" / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": "zeroshot", "method": method, "datasets": datasets}))
    return path, datasets


def test_report_builds_the_zeroshot_table_and_one_plot_per_sweep(tmp_path: Path) -> None:
    ratios = {"interp_r0.25": 0.25, "interpolation": 0.5, "interp_r0.75": 0.75}
    written = {m: write_zeroshot(tmp_path, m, i, ratios.get(m)) for i, m in enumerate(METHODS)}
    main_results = []
    for method in ("ma", *ratios):  # the main table and the sweep's own table still need fine-tuned results
        path = tmp_path / "coco" / f"{method}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        split = {"metrics": {"ir_r1": 0.2, "tr_r1": 0.3}, "baseline": {"ir_r1": 0.01, "tr_r1": 0.01}}
        parent = {"stage": "merge", "merge": {"params": {"ratio": ratios.get(method)}}}
        lineage = {"stage": "finetune", "parent": parent}
        path.write_text(json.dumps({"task": "coco", "method": method, "splits": {"test": split}, "lineage": lineage}))
        main_results.append(path)
    argv = [
        *("--results", *map(str, main_results)),
        *("--zeroshot", *(str(written[m][0]) for m in METHODS)),
        *("--sweep", "interpolation_ratio:interpolation:ratio=interp_r0.25,interpolation,interp_r0.75"),
        *("--sharing", "modality_specific", "--seed-steps", "150"),
        *("--tables", str(tmp_path / "tables"), "--plots", str(tmp_path / "plots")),
    ]
    assert report_main(argv) == 0
    with open(tmp_path / "tables" / "zeroshot.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == [*METHODS, "trivial baseline"]
    labels = [f"{name} {side}@{k}" for name in ("COCO", "F30K") for side in ("TR", "IR") for k in (1, 5, 10)]
    assert list(rows[0]) == ["method", *labels, "mean"]
    for row, method in zip(rows, METHODS):
        datasets = written[method][1]
        values = [
            datasets[d]["metrics"][f"{s.lower()}_r{k}"] for d in DATASETS for s in ("TR", "IR") for k in (1, 5, 10)
        ]
        assert [float(row[label]) for label in labels] == pytest.approx(values, abs=1e-9)
        assert float(row["mean"]) == pytest.approx(sum(values) / len(values), abs=1e-9)
    assert float(rows[-1]["COCO TR@1"]) == pytest.approx(0.01) and float(rows[-1]["F30K IR@10"]) == pytest.approx(0.06)
    md = (tmp_path / "tables" / "zeroshot.md").read_text()
    assert f"{100 * written['seed'][1]['coco']['metrics']['tr_r1']:.2f}" in md
    assert "COCO TR@1" in (tmp_path / "tables" / "zeroshot.tex").read_text()
    svg = (tmp_path / "plots" / "sweep_interpolation_ratio_zeroshot.svg").read_text()
    assert "COCO mean recall" in svg and "F30K mean recall" in svg
    assert (tmp_path / "plots" / "sweep_interpolation_ratio_zeroshot.png").read_bytes().startswith(b"\x89PNG")
    # The plotted points: x the ratio of each merge's lineage, y the mean of a dataset's six recalls (percent).
    root = ET.parse(tmp_path / "plots" / "sweep_interpolation_ratio_zeroshot.svg").getroot()
    lines = [e for e in root.iter() if e.get("id", "").startswith("series")]
    assert len(lines) == 3  # COCO, F30K and their mean
    means = {m: sum(written[m][1]["coco"]["metrics"][k] for k in KEYS) / 6 for m in ratios}
    assert sweep_points(read_zeroshot([written[m][0] for m in METHODS]), SWEEP)[0] == Series(
        "COCO mean recall", tuple(ratios.values()), tuple(100 * means[m] for m in ratios)
    )


def test_report_names_the_file_of_a_broken_zeroshot_json(tmp_path: Path, capsys) -> None:
    path, _ = write_zeroshot(tmp_path, "seed", 0, None)
    data = json.loads(path.read_text())
    data["datasets"]["f30k"]["metrics"]["ir_r5"] = math.nan
    path.write_text(json.dumps(data))
    result = tmp_path / "coco" / "ma.json"
    result.parent.mkdir(parents=True)
    split = {"metrics": {"ir_r1": 0.2, "tr_r1": 0.3}, "baseline": {"ir_r1": 0.01, "tr_r1": 0.01}}
    result.write_text(json.dumps({"task": "coco", "method": "ma", "splits": {"test": split}}))
    argv = ["--results", str(result), "--zeroshot", str(path), "--sharing", "modality_specific"]
    argv += ["--seed-steps", "150", "--tables", str(tmp_path / "t"), "--plots", str(tmp_path / "p")]
    assert report_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vlmerge.report: error")]
    assert len(err) == 1 and str(path) in err[0] and "datasets.f30k.metrics.ir_r5" in err[0]
