"""The report stage: tables equal the result JSONs, Spearman against a naive reference, SVG/PNG
plots, sweep detection, ablation tables, bad input, and the report rule's job set."""

from __future__ import annotations

import csv
import json
import math
import random
import re
import statistics
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.builders import planned_jobs, snakemake, write_config
from vlmerge.report.cli import main
from vlmerge.report.headline import HEADLINES, columns
from vlmerge.report.plots import line_plot, scatter_plot, series_gid, write_plot
from vlmerge.report.series import Series
from vlmerge.report.spearman import spearman
from vlmerge.report.sweeps import find_sweeps
from vlmerge.report.tables import to_latex, to_markdown

TASKS = ("vqa", "coco", "f30k", "nlvr2")
METHODS = ("ma", "ms", "interpolation", "arithmetic", "regmean")
BASELINE = {"vqa_score": 0.11, "ir_r1": 0.005, "tr_r1": 0.004, "accuracy": 0.5}
SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_result(
    root: Path, task: str, method: str, scores: dict[str, float], merge: dict[str, float] | None = None
) -> Path:
    """A result JSON shaped like ``python -m vlmerge.evaluate`` writes it; ``scores`` keyed by column label."""
    splits: dict[str, dict] = {}
    for column in HEADLINES[task]:
        split = splits.setdefault(column.split, {"metrics": {}, "baseline": {}, "margin": {}})
        split["metrics"][column.metric] = scores[column.label]
        split["baseline"][column.metric] = BASELINE[column.metric]
    parent = {"stage": "merge", "merge": {"method": "x", "params": merge}} if merge else {"stage": "pretrain"}
    path = root / task / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"task": task, "method": method, "splits": splits, "lineage": {"stage": "finetune", "parent": parent}}
        )
    )
    return path


def write_zeroshot_result(root: Path, method: str, rng: random.Random, merge: dict[str, float] | None) -> Path:
    """A zero-shot JSON shaped like ``python -m vlmerge.zeroshot`` writes it (COCO and F30K, random recalls)."""
    keys = [f"{side}_r{k}" for side in ("tr", "ir") for k in (1, 5, 10)]
    lineage = {"stage": "merge", "merge": {"method": "x", "params": merge}} if merge else {"stage": "pretrain"}
    datasets = {
        d: {"metrics": {k: rng.random() for k in keys}, "baseline": dict.fromkeys(keys, 0.01), "lineage": lineage}
        for d in ("coco", "f30k")
    }
    path = root / "zeroshot" / f"{method}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": "zeroshot", "method": method, "datasets": datasets}))
    return path


def random_scores(rng: random.Random, task: str) -> dict[str, float]:
    return {c.label: rng.random() for c in HEADLINES[task]}


def run_report(tmp_path: Path, results: list[Path], *extra: str) -> int:
    return main(
        [
            "--results",
            *map(str, results),
            "--sharing",
            "modality_specific",
            "--seed-steps",
            "150",
            "--tables",
            str(tmp_path / "tables"),
            "--plots",
            str(tmp_path / "plots"),
            *extra,
        ]
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def main_results(tmp_path: Path, seed: int = 0) -> tuple[list[Path], dict[tuple[str, str], dict[str, float]]]:
    rng = random.Random(seed)
    scores = {(t, m): random_scores(rng, t) for t in TASKS for m in METHODS}
    paths = [write_result(tmp_path / "results", t, m, scores[(t, m)]) for t in TASKS for m in METHODS]
    return paths, scores


def test_main_table_holds_the_json_values_and_the_gap_to_ma(tmp_path: Path) -> None:
    paths, scores = main_results(tmp_path)
    assert run_report(tmp_path, paths) == 0
    rows = read_csv(tmp_path / "tables/main.csv")
    assert [r["method"] for r in rows] == [*METHODS, "trivial baseline"]
    labels = [c.label for c in columns(TASKS)]
    assert list(rows[0]) == ["method", *labels, "mean", "gap to MA"]
    means = {}
    for row, method in zip(rows, METHODS):
        expected = {label: value for t in TASKS for label, value in scores[(t, method)].items()}
        for label in labels:
            assert float(row[label]) == pytest.approx(expected[label], abs=1e-9)
        means[method] = sum(expected.values()) / len(expected)
        assert float(row["mean"]) == pytest.approx(means[method], abs=1e-9)
    for row, method in zip(rows, METHODS):
        assert float(row["gap to MA"]) == pytest.approx(means[method] - means["ma"], abs=1e-9)
    baseline = rows[-1]
    assert float(baseline["VQA score"]) == 0.11 and float(baseline["NLVR2 test-P"]) == 0.5
    assert float(baseline["COCO IR@1"]) == 0.005 and float(baseline["F30K TR@1"]) == 0.004


def test_markdown_csv_and_latex_agree(tmp_path: Path) -> None:
    paths, _ = main_results(tmp_path, seed=1)
    assert run_report(tmp_path, paths) == 0
    rows = read_csv(tmp_path / "tables/main.csv")
    md = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in (tmp_path / "tables/main.md").read_text().splitlines()
    ]
    tex = [
        line.removesuffix(r" \\").split(" & ")
        for line in (tmp_path / "tables/main.tex").read_text().splitlines()
        if line.endswith(r" \\")
    ]
    header = list(rows[0])
    assert md[0] == header and tex[0] == header
    assert len(md) == len(rows) + 2 and len(tex) == len(rows) + 1  # markdown has an alignment line
    assert md[1][0].startswith(":-") and all(a.endswith("-:") for a in md[1][1:])  # text left, numbers right
    for row, md_row, tex_row in zip(rows, md[2:], tex[1:]):
        printed = [row["method"], *(f"{100 * float(row[c]):.2f}" for c in header[1:])]
        assert md_row == printed and tex_row == printed


def sweep_results(tmp_path: Path) -> tuple[list[Path], str]:
    """Results of an interpolation ratio sweep on VQA and NLVR2, and the ``--sweep`` argument."""
    rng = random.Random(2)
    paths = [
        write_result(tmp_path / "results", t, name, random_scores(rng, t), {"ratio": ratio})
        for name, ratio in {"interp_r0.25": 0.25, "interpolation": 0.5, "interp_r0.75": 0.75}.items()
        for t in ("vqa", "nlvr2")
    ]
    return paths, "interpolation_ratio:interpolation:ratio=interp_r0.25,interpolation,interp_r0.75"


def written_bytes(tmp_path: Path) -> dict[str, bytes]:
    return {
        f"{p.parent.name}/{p.name}": p.read_bytes()
        for folder in ("tables", "plots")
        for p in (tmp_path / folder).iterdir()
    }


def test_rerun_gives_identical_bytes(tmp_path: Path) -> None:
    """Tables and plots (SVG ids, PNG and SVG metadata) do not change between runs, in one process
    or in a new one with another hash seed."""
    paths, sweep = sweep_results(tmp_path)
    assert run_report(tmp_path, paths, "--sweep", sweep) == 0
    first = written_bytes(tmp_path)
    assert {"plots/sweep_interpolation_ratio.svg", "plots/sweep_interpolation_ratio.png"} <= set(first)
    assert b"<dc:date>" not in first["plots/sweep_interpolation_ratio.svg"]
    assert b"Software" not in first["plots/sweep_interpolation_ratio.png"]
    assert run_report(tmp_path, paths, "--sweep", sweep) == 0
    assert written_bytes(tmp_path) == first
    args = [
        "--results",
        *map(str, paths),
        "--sharing",
        "modality_specific",
        "--seed-steps",
        "150",
        "--sweep",
        sweep,
        "--tables",
        str(tmp_path / "tables"),
        "--plots",
        str(tmp_path / "plots"),
    ]
    (tmp_path / "mpl").mkdir()  # a user's matplotlibrc must not change the plots
    (tmp_path / "mpl/matplotlibrc").write_text("lines.linewidth: 4\nfont.size: 20\nsvg.fonttype: none\n")
    env = {"PATH": "", "PYTHONHASHSEED": "12345", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    subprocess.run([sys.executable, "-m", "vlmerge.report", *args], check=True, capture_output=True, env=env)
    assert written_bytes(tmp_path) == first


def test_workflow_facing_modules_import_nothing_heavy() -> None:
    """The workflow imports these at Snakemake start-up: pandas, matplotlib and scipy stay out."""
    code = (
        "import sys, vlmerge.report.outputs, vlmerge.report.config, vlmerge.report.sweeps; "
        "print(sorted(m for m in ('pandas', 'matplotlib', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def naive_ranks(values: list[float]) -> list[float]:
    return [1 + sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


def test_spearman_matches_a_naive_reference_with_ties() -> None:
    rng = random.Random(0)
    checked = 0
    for n in (3, 5, 8, 20):
        x = [float(rng.randint(0, 4)) for _ in range(n)]  # few distinct values: many ties
        y = [rng.randint(0, 3) + 0.5 * v for v in x]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        expected = statistics.correlation(naive_ranks(x), naive_ranks(y))
        assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
        checked += 1
    assert checked >= 3


def test_spearman_hand_worked_values() -> None:
    # No ties: 1 - 6 Σd² / (n(n²-1)); d = (0, 0, 1, 1) gives 1 - 12/60, d = (0, 2, 0, 2) gives 1 - 48/60.
    assert spearman([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 4, 3, 2]) == pytest.approx(0.2)
    # One tie in y (ranks 1, 2, 3.5, 5, 3.5): scipy.stats.spearmanr documents 0.8207826816681233.
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233, abs=1e-12)
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_spearman_is_nan_where_undefined_and_says_why(caplog) -> None:
    caplog.set_level("INFO", logger="vlmerge.report.spearman")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning must not reach the log
        assert math.isnan(spearman([1, 2, 3], [5, 5, 5], what="l2 and VQA"))
        assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))  # two points: always ±1, says nothing
        assert math.isnan(spearman([1.0], [2.0]))
    assert "l2 and VQA" in caplog.text and "constant y" in caplog.text and "fewer than 3" in caplog.text
    with pytest.raises(ValueError, match="3 values but y has 2"):
        spearman([1, 2, 3], [1, 2])


def svg_series(path: Path, index: int) -> ET.Element | None:
    """The group of the ``index``-th series in a written SVG plot (raises on malformed XML)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return next((g for g in root.iter(f"{SVG}g") if g.get("id") == series_gid(index)), None)


def markers(path: Path) -> int:
    """Markers of every series in a written SVG plot: matplotlib draws each as one ``<use>``."""
    groups = [svg_series(path, i) for i in range(64)]
    return sum(len(list(g.iter(f"{SVG}use"))) for g in groups if g is not None)


def test_plots_are_svg_and_png_with_one_marker_per_point(tmp_path: Path) -> None:
    series = [
        Series("a & <b>", (0.1, 0.5, 0.3), (0.2, 0.4, 0.9)),
        Series("c", (0.2, 0.25), (0.5, 0.5)),
        Series("empty", (), ()),
    ]
    line = write_plot(line_plot(series, "sweep", "ratio", "score"), tmp_path / "line")
    scatter = write_plot(scatter_plot(series, "scatter", "x", "y"), tmp_path / "scatter")
    assert line == [tmp_path / "line.svg", tmp_path / "line.png"]
    assert scatter == [tmp_path / "scatter.svg", tmp_path / "scatter.png"]
    assert all(path.read_bytes().startswith(PNG_SIGNATURE) for path in (line[1], scatter[1]))
    assert markers(line[0]) == 5 and markers(scatter[0]) == 5
    # The line plot joins each series' points (one <path>); the scatter plot draws markers only.
    assert [len(svg_series(line[0], i).findall(f"{SVG}path")) for i in range(2)] == [1, 1]
    assert [svg_series(scatter[0], i).findall(f"{SVG}path") for i in range(2)] == [[], []]
    assert svg_series(line[0], 2) is None  # a series without points is left out
    # Text is drawn as glyph paths; matplotlib leaves each string as a comment beside it.
    text = scatter[0].read_text()
    assert "<!-- a &amp; &lt;b&gt; -->" in text and "<!-- scatter -->" in text


def test_plot_joins_points_in_x_order_and_axes_cover_them() -> None:
    figure = line_plot(
        [Series("a", (0.5, 0.1, 0.3), (1.0, 2.0, 3.0)), Series("one point", (7.0,), (-1.0,))], "t", "x", "y"
    )
    axes = figure.axes[0]
    assert [tuple(line.get_xdata()) for line in axes.get_lines()] == [(0.1, 0.3, 0.5), (7.0,)]
    assert tuple(axes.get_lines()[0].get_ydata()) == (2.0, 3.0, 1.0)
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    assert x0 < 0.1 and 7.0 < x1 and y0 < -1.0 and 3.0 < y1
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["a", "one point"]
    with pytest.raises(ValueError, match="nothing to plot"):
        scatter_plot([Series("empty", (), ())], "t", "x", "y")


def test_dollars_in_a_label_are_text(tmp_path: Path) -> None:
    figure = scatter_plot([Series(r"a $\x$ b", (1.0,), (2.0,))], "t", "x", "y")
    write_plot(figure, tmp_path / "dollar")  # as mathtext, "\x" would be an unknown symbol: ValueError
    assert "<!-- a $\\x$ b -->" in (tmp_path / "dollar.svg").read_text()


def test_table_cells_escapes_and_missing_values() -> None:
    frame = pd.DataFrame(
        {"method": ["a_b|c", "d"], "n": [5, 12], "ratio": [0.25, 1 / 3], "VQA score": [0.123456, math.nan]}
    )
    header, align, *body = to_markdown(frame, ["VQA score"]).splitlines()
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in (header, *body)]
    assert cells == [
        ["method", "n", "ratio", "VQA score"],
        [r"a_b\|c", "5", "0.25", "12.35"],
        ["d", "12", "0.3333", "–"],
    ]
    assert align.replace("-", "") == "|:|:|:|:|"  # text left, numbers right
    assert to_latex(frame, ["VQA score"]).splitlines() == [
        r"\begin{tabular}{lrrr}",
        r"\toprule",
        r"method & n & ratio & VQA score \\",
        r"\midrule",
        r"a\_b|c & 5 & 0.25 & 12.35 \\",
        r"d & 12 & 0.3333 & -- \\",
        r"\bottomrule",
        r"\end{tabular}",
    ]


def test_sweep_detection() -> None:
    entries = {
        "interpolation": {"method": "interpolation", "params": {"ratio": 0.5}},
        "interp_r0.25": {"method": "interpolation", "params": {"ratio": 0.25}},
        "interp_r0.75": {"method": "interpolation", "params": {"ratio": 0.75}},
        "arithmetic": {"method": "arithmetic", "params": {"lam": 0.5}},
        "arith_upstream": {"method": "arithmetic", "params": {"lam": 0.5, "mode": "upstream"}},  # not numeric
        "regmean": {"method": "regmean", "params": {"alpha": 0.9, "normalize": "mean", "used_experts_only": "task"}},
        "regmean_a0.5": {
            "method": "regmean",
            "params": {"alpha": 0.5, "normalize": "mean", "used_experts_only": "task"},
        },
        "regmean_sum": {"method": "regmean", "params": {"alpha": 0.1, "normalize": "sum", "used_experts_only": "task"}},
        "ties_a": {"method": "ties", "params": {"k": 20, "lam": 1.0}},
        "ties_b": {"method": "ties", "params": {"k": 50, "lam": 0.5}},  # two parameters change: no sweep
        "dare": {"method": "dare", "params": {"p": 0.5, "rescale": True, "seed": None}},
        "dare_b": {"method": "dare", "params": {"p": 0.5, "rescale": False}},  # a boolean is not swept
    }
    sweeps = {s.name: (s.method, s.param, s.names) for s in find_sweeps(entries)}
    assert sweeps == {
        "interpolation_ratio": ("interpolation", "ratio", ("interp_r0.25", "interpolation", "interp_r0.75")),
        "regmean_alpha": ("regmean", "alpha", ("regmean_a0.5", "regmean")),
    }
    twice = {
        **entries,
        "regmean_sum_b": {
            "method": "regmean",
            "params": {"alpha": 0.3, "normalize": "sum", "used_experts_only": "task"},
        },
    }
    assert sorted(s.name for s in find_sweeps(twice)) == ["interpolation_ratio", "regmean_alpha_1", "regmean_alpha_2"]
    assert find_sweeps({"a": {"method": "interpolation", "params": {"ratio": 0.5}}}) == []


def test_sweep_table_and_plot_read_the_parameter_from_the_lineage(tmp_path: Path) -> None:
    paths, sweep = sweep_results(tmp_path)
    assert run_report(tmp_path, paths, "--sweep", sweep) == 0
    rows = read_csv(tmp_path / "tables/sweep_interpolation_ratio.csv")
    assert [(r["merge"], float(r["ratio"])) for r in rows] == [
        ("interp_r0.25", 0.25),
        ("interpolation", 0.5),
        ("interp_r0.75", 0.75),
    ]
    assert markers(tmp_path / "plots/sweep_interpolation_ratio.svg") == 3 * 3  # entries x (VQA, NLVR2 dev, test-P)
    assert (tmp_path / "plots/sweep_interpolation_ratio.png").read_bytes().startswith(PNG_SIGNATURE)


def write_distance(root: Path, run: str, values: dict[str, float]) -> Path:
    path = root / "distance" / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"overall": {"pairs": {"v-l": values}}}))
    return path


def test_ablation_tables_and_distance_correlation(tmp_path: Path) -> None:
    root, rng = tmp_path / "results", random.Random(3)
    lineages = {
        "": "ms_modality_specific",
        "@ms_attn": "ms_attn",
        "@ms_ffn": "ms_ffn",
        "@seed50": "ms_modality_specific@seed50",
        "@seed300": "ms_modality_specific@seed300",
    }
    vqa = {suffix: rng.random() for suffix in lineages}
    paths = [write_result(root, "vqa", f"interpolation{s}", {"VQA score": v}) for s, v in vqa.items()]
    paths.append(write_result(root, "vqa", "ma", {"VQA score": 0.3}))
    cosine = {s: rng.random() for s in lineages}
    distances = [
        write_distance(
            root, run, {"l2": 1.0, "cosine": cosine[s], "sign": 0.5, "soft_sign": 0.4, "truncated_sign": 0.3}
        )
        for s, run in lineages.items()
    ]
    assert run_report(tmp_path, paths, "--distances", *map(str, distances)) == 0

    sharing = read_csv(tmp_path / "tables/sharing.csv")
    assert [(r["method"], r["sharing"]) for r in sharing] == [
        ("interpolation", "modality_specific"),
        ("interpolation", "attn"),
        ("interpolation", "ffn"),
    ]
    assert float(sharing[1]["VQA score"]) == pytest.approx(vqa["@ms_attn"])
    seed = read_csv(tmp_path / "tables/seed_steps.csv")
    assert [int(r["seed steps"]) for r in seed] == [50, 150, 300]
    assert [float(r["VQA score"]) for r in seed] == pytest.approx([vqa["@seed50"], vqa[""], vqa["@seed300"]])
    table = {r["distance"]: r for r in read_csv(tmp_path / "tables/distance.csv")}
    suffixes = list(lineages)
    expected = statistics.correlation(
        naive_ranks([cosine[s] for s in suffixes]), naive_ranks([vqa[s] for s in suffixes])
    )
    assert float(table["v-l cosine"]["spearman"]) == pytest.approx(expected) and table["v-l cosine"]["n"] == "5"
    assert table["v-l l2"]["spearman"] == ""  # a constant distance: undefined, an empty cell
    assert markers(tmp_path / "plots/distance_cosine.svg") == 5
    assert markers(tmp_path / "plots/seed_steps.svg") == 3
    assert "ma" not in (tmp_path / "tables/sharing.md").read_text()


def test_missing_metric_is_a_one_line_error_naming_file_and_key(tmp_path: Path, capsys) -> None:
    paths, _ = main_results(tmp_path)
    broken = tmp_path / "results/nlvr2/regmean.json"
    data = json.loads(broken.read_text())
    del data["splits"]["test1"]["metrics"]["accuracy"]
    broken.write_text(json.dumps(data))
    assert run_report(tmp_path, paths) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("vlmerge.report: error:")]
    assert len(errors) == 1 and "Traceback" not in err  # (the other lines are the stage's log)
    assert str(broken) in errors[0] and "splits.test1.metrics.accuracy" in errors[0]
    assert not (tmp_path / "tables/main.csv").exists()


def test_result_under_another_task_is_an_error(tmp_path: Path, capsys) -> None:
    path = write_result(tmp_path / "results", "vqa", "ma", {"VQA score": 0.3})
    moved = tmp_path / "results/coco/ma.json"
    moved.parent.mkdir(parents=True)
    path.rename(moved)
    assert run_report(tmp_path, [moved]) == 2
    err = capsys.readouterr().err
    assert str(moved) in err and "'vqa'" in err and "coco/" in err


def test_headline_splits_are_the_ones_evaluate_reports() -> None:
    from vlmerge.tasks.registry import TASKS as REGISTRY

    for task, cols in HEADLINES.items():
        assert {c.split for c in cols} == set(REGISTRY[task].test), task


def test_report_target_plans_every_result_and_one_report_job(tmp_path: Path) -> None:
    jobs = planned_jobs(tmp_path, write_config(tmp_path), "tables")
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
        "zeroshot_eval": 6,
        "tables": 1,
    }


def test_report_rule_passes_the_configured_sweeps(tmp_path: Path) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["merge"]["methods"]["interp_r0.25"] = {"method": "interpolation", "params": {"ratio": 0.25}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, path, "tables", "-n", "-p")
    assert out.returncode == 0, out.stderr
    assert "--sweep interpolation_ratio:interpolation:ratio=interp_r0.25,interpolation" in out.stdout
    assert "results/plots/sweep_interpolation_ratio.svg" in out.stdout


def test_lineage_names_round_trip() -> None:
    from vlmerge.catalog.lineages import Defaults, ms_run, resolve, split_method, variant_of_ms_run

    defaults = Defaults("modality_specific", 150)
    assert split_method("regmean_alpha0.5@ms_attn") == ("regmean_alpha0.5", "ms_attn")
    assert ms_run("ms_attn", defaults) == "ms_attn" and ms_run("seed50", defaults) == "ms_modality_specific@seed50"
    for variant in (None, "ms_attn", "ms_ln", "seed50", "seed300"):
        assert variant_of_ms_run(ms_run(variant, defaults), defaults) == variant
    assert resolve("seed50", defaults).seed_steps == 50 and resolve("ms_ffn", defaults).sharing == "ffn"
    with pytest.raises(ValueError, match="both"):
        variant_of_ms_run("ms_attn@seed50", defaults)
    with pytest.raises(ValueError, match="unknown lineage"):
        resolve("ms_everything", defaults)


def test_the_rule_declares_exactly_what_the_stage_writes(tmp_path: Path, monkeypatch) -> None:
    """workflow/reporting.py names the outputs; the CLI, given the rule's inputs, writes those and no others."""
    import shlex
    from types import SimpleNamespace

    from workflow.ablations import Ablations
    from workflow.finetuning import Finetuning
    from workflow.merging import Merging
    from workflow.paths import Paths
    from workflow.reporting import Reporting

    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["merge"]["methods"]["interp_r0.25"] = {"method": "interpolation", "params": {"ratio": 0.25}}
    config["report"] = {
        "ablations": {
            "sharing": ["attn"],
            "seed_steps": [50],
            "methods": ["interpolation", "ms"],
            "tasks": ["vqa", "coco"],
        }
    }
    paths, ablations = Paths(config), Ablations(config)
    merging = Merging(config, paths, ablations)
    reporting = Reporting(config, paths, Finetuning(config, paths, merging, ablations), ablations)
    rng = random.Random(4)
    for result in map(Path, reporting.results()):
        ratio = config["merge"]["methods"].get(result.stem, {}).get("params", {}).get("ratio")
        write_result(
            tmp_path / "results",
            result.parent.name,
            result.stem,
            random_scores(rng, result.parent.name),
            {"ratio": ratio} if ratio is not None else None,
        )
    for zeroshot in map(Path, reporting.zeroshot_results()):
        ratio = config["merge"]["methods"].get(zeroshot.stem, {}).get("params", {}).get("ratio")
        write_zeroshot_result(tmp_path / "results", zeroshot.stem, rng, {"ratio": ratio} if ratio is not None else None)
    for distance in map(Path, reporting.distances()):
        write_distance(
            tmp_path / "results",
            distance.stem,
            {m: rng.random() for m in ("l2", "cosine", "sign", "soft_sign", "truncated_sign")},
        )
    monkeypatch.chdir(tmp_path)
    inputs = SimpleNamespace(
        results=reporting.results(), zeroshot=reporting.zeroshot_results(), distances=reporting.distances()
    )
    args = reporting.args(None, inputs)
    assert main(shlex.split(args)) == 0
    written = {
        str(p.relative_to(tmp_path))
        for folder in ("tables", "plots")
        for p in (tmp_path / "results" / folder).iterdir()
    }
    assert written == set(reporting.tables() + reporting.plots())
    assert {
        "results/tables/sweep_interpolation_ratio.md",
        "results/tables/sharing.tex",
        "results/plots/seed_steps.svg",
        "results/plots/distance_sign.svg",
        "results/tables/zeroshot.csv",
        "results/plots/sweep_interpolation_ratio_zeroshot.png",
    } <= written
