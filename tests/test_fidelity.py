"""docs/fidelity.md, row by row: what a job of the paper profile actually receives.

One test per row of the page's tables (``test_rowNN_<what>``; a coverage test parses the page, so a new row
without a test fails). The switchable rows are read from dry runs of the whole ``results`` DAG, planned once
per module, three times: the paper profile (``--profile profiles/slurm``: config.yaml + paper.yaml), the same
with paper-fixed.yaml layered after it, and config.yaml alone (the embedded default). Every job's shell
command is parsed (its flags and its ``--config`` JSON), and each row checks upstream's choice under the
paper profile, vlmerge's fix under paper-fixed where that overlay changes the row, the embedded default's
value, and that this value is the stage's own default. Rows that are not switchable check the page still
says so and test vlmerge's behaviour directly.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel

from tests.builders import ENV, ROOT, SNAKEMAKE, paper_site
from vlmerge.catalog.methods import METHOD_INFO, PER_TASK_EXPERTS
from vlmerge.catalog.names import TASKS as TASK_NAMES
from vlmerge.data.arrow import ConvertOptions, convert
from vlmerge.data.arrow.vqa_answers import build_vocabulary, score_answers
from vlmerge.data.collate import IGNORE_INDEX, BatchCollator, WholeWordMaskCollator, encode_texts
from vlmerge.data.randaugment import autocontrast, sharpness
from vlmerge.data.schema import FILES
from vlmerge.data.synth import generate
from vlmerge.data.tokenizer import load_tokenizer, train_wordpiece
from vlmerge.data.transforms import train_transform
from vlmerge.finetune.config import FinetuneRecipe, FinetuneSection, FinetuneSettings, TaskOverrides
from vlmerge.finetune.run import _split_options
from vlmerge.grams.config import GramsSettings
from vlmerge.merging import GramsError, GramStats, gram_targets, infer_layout, merge
from vlmerge.merging.solve import solve_psd
from vlmerge.metrics import question_accuracy, retrieval_recall
from vlmerge.model import Heads, create_model, expert_layout, model_config
from vlmerge.model.config import PRESETS, ModelConfig
from vlmerge.model.import_vlmerging import to_vlmerging_state
from vlmerge.model.layers import attention_fp32_logits, fp16_autocast
from vlmerge.objectives import sample_hard_negatives
from vlmerge.prepare.cli import main as prepare_main
from vlmerge.prepare.config import PrepareSettings
from vlmerge.pretrain.config import MODEL_KEYS, PretrainRecipe, PretrainSection, PretrainSettings
from vlmerge.pretrain.run import model_overrides
from vlmerge.runtime.settings import build
from vlmerge.tasks import TASKS
from vlmerge.tasks.settings import SplitOptions
from vlmerge.train.settings import TrainingRecipe

DOC = ROOT / "docs" / "fidelity.md"
PRETRAIN_RUNS = ("seed", "ma", "ms_modality_specific")
NOT_SWITCHABLE = "not yet switchable"
STAGES = {"prepare", "vocab", "pretrain", "grams", "merge", "finetune", "evaluate"}


# ---------------------------------------------------------------------------------------------- the dry runs
@dataclasses.dataclass(frozen=True)
class Job:
    """One planned job: its stage and its flags (each with the values it was given)."""

    stage: str
    flags: dict[str, list[str]]

    def flag(self, name: str) -> str:
        (value,) = self.flags[name]
        return value

    @property
    def settings(self) -> dict[str, Any]:
        """The ``--config`` JSON the rule hands the stage."""
        return json.loads(self.flag("--config"))

    @property
    def params(self) -> dict[str, str]:
        """A merge job's ``--param k=v`` pairs."""
        return dict(p.split("=", 1) for p in self.flags.get("--param", []))


def parse_job(line: str) -> Job:
    """A shell command line of ``snakemake -n -p`` → its stage and flags (up to the log redirect)."""
    words = shlex.split(line.partition("python -m vlmerge.")[2])
    words = words[: words.index(">")] if ">" in words else words
    flags: dict[str, list[str]] = {}
    rest = words[1:]
    for i, word in enumerate(rest):
        if word.startswith("--"):
            has_value = i + 1 < len(rest) and not rest[i + 1].startswith("--")
            flags.setdefault(word, []).append(rest[i + 1] if has_value else "")
    return Job(words[0], flags)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every job of one dry run, found by stage and output."""

    jobs: tuple[Job, ...]

    def find(self, stage: str, **flags: str) -> Job:
        found = [j for j in self.jobs if j.stage == stage and all(j.flags.get(k) == [v] for k, v in flags.items())]
        assert len(found) == 1, f"{len(found)} {stage} jobs with {flags}"
        return found[0]

    def all(self, stage: str) -> list[Job]:
        return [j for j in self.jobs if j.stage == stage]

    def pretrain(self, run: str) -> dict[str, Any]:
        return self.find("pretrain", **{"--out": f"results/pretrain/{run}.safetensors"}).settings

    def pretrain_runs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for run in PRETRAIN_RUNS:
            yield run, self.pretrain(run)

    def finetune(self, task: str, method: str = "ma") -> Job:
        return self.find("finetune", **{"--out": f"results/finetune/{task}/{method}.safetensors"})

    def grams(self, task: str) -> dict[str, Any]:
        return self.find("grams", **{"--task": task}).settings

    def merge(self, name: str, task: str | None = None) -> dict[str, str]:
        out = f"results/merged/{task}/{name}.safetensors" if task else f"results/merged/{name}.safetensors"
        return self.find("merge", **{"--out": out}).params

    def prepare(self, dataset: str) -> dict[str, Any]:
        return self.find("prepare", **{"--dataset": dataset}).settings


def dry_run(workdir: Path, *configs: Path, profile: bool) -> subprocess.Popen[str]:
    """``snakemake results -n -p`` from the repository root (the paper runs under ``--profile profiles/slurm``)."""
    args = [*SNAKEMAKE, "results", "-n", "-p", "-d", str(workdir)]
    args += ["--profile", "profiles/slurm"] if profile else []
    return subprocess.Popen(
        [*args, "--configfile", *map(str, configs)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Plan]:
    """The three dry runs, side by side: ``paper``, ``fixed`` (paper + paper-fixed) and ``default``."""
    tmp = tmp_path_factory.mktemp("fidelity")
    site = paper_site(tmp)  # after the overlays: it only names external paths
    base, paper, fixed = (
        ROOT / "config.yaml",
        ROOT / "profiles/slurm/paper.yaml",
        ROOT / "profiles/slurm/paper-fixed.yaml",
    )
    runs = {
        "paper": dry_run(tmp / "paper", base, paper, site, profile=True),
        "fixed": dry_run(tmp / "fixed", base, paper, fixed, site, profile=True),
        "default": dry_run(tmp / "default", base, profile=False),
    }
    out: dict[str, Plan] = {}
    for name, process in runs.items():
        text, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name} dry run failed:\n{text[-3000:]}"
        jobs = tuple(parse_job(line) for line in text.splitlines() if "python -m vlmerge." in line)
        out[name] = Plan(jobs)
    return out


def checkpoint_config(settings: dict[str, Any]) -> ModelConfig:
    """The model config a pre-training job's settings build (and its checkpoint records)."""
    return model_config(settings["preset"], **model_overrides(build(PretrainSettings, settings, where="pretrain")))


def default_of(model: type[BaseModel], field: str) -> Any:
    """A settings model's default of ``field`` (the stage's own)."""
    return model.model_fields[field].default


def doc_rows() -> dict[int, dict[str, str]]:
    """The rows of docs/fidelity.md's tables: number → {"what": …, "option": …} (the option is the
    second-to-last column, so a ``|`` inside an earlier cell cannot shift it)."""
    rows: dict[int, dict[str, str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            rows[int(cells[0])] = {"what": cells[1], "option": cells[-2]}
    return rows


def option(row: int) -> str:
    return doc_rows()[row]["option"]


def not_switchable(row: int) -> bool:
    """The page says the row has no switch (yet, or on purpose)."""
    return option(row).startswith((NOT_SWITCHABLE, "not switchable, on purpose"))


# ---------------------------------------------------------------------------------------------- coverage
def test_every_row_of_the_page_has_a_test() -> None:
    tests = {int(m[1]) for name in globals() if (m := re.fullmatch(r"test_row(\d+)_\w+", name))}
    rows = set(doc_rows())
    assert rows == set(range(1, max(rows) + 1)), "rows are numbered 1..N without gaps"
    assert rows - tests == set(), "rows of docs/fidelity.md without a test_rowNN_* here"
    assert tests - rows == set(), "tests of rows the page no longer has"


def test_the_readme_table_lists_every_row_with_the_pages_option() -> None:
    """README.md's Fidelity table: one row per departure, with the page's "what", option and effect."""
    page = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0].isdigit():
            page[int(cells[0])] = (cells[1], cells[-2], cells[-1])
    readme = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0].isdigit() and len(cells) == 5:
            readme[int(cells[0])] = (cells[2], cells[3], cells[4])
    assert readme == page


def named_options(text: str) -> list[str]:
    """The config keys a cell names in backticks (``pretrain.x: v`` → ``pretrain.x``; ``{a, b}`` expanded)."""
    keys = []
    for span in re.findall(r"`([^`]+)`", text):
        path = span.split(":")[0].strip()
        if path.startswith(("pretrain.", "finetune.", "merge.", "data.", "model.")):
            head, _, names = path.partition("{")
            keys += [head + n.strip() for n in names.rstrip("}").split(",")] if names else [path]
    return keys


def test_the_options_the_page_names_are_settings() -> None:
    """Every config key of the page's option column is a field of the settings model that reads it."""
    sections: dict[str, set[str]] = {
        "pretrain.": set(PretrainSection.model_fields),
        "finetune.settings.<task>.": set(TaskOverrides.model_fields),
        "finetune.": set(FinetuneSection.model_fields),
        "merge.grams.": set(GramsSettings.model_fields),
        "merge.methods.<name>.": {"method", "params"},
        "data.prepare.": set(PrepareSettings.model_fields),
        "model.overrides.": set(MODEL_KEYS),
    }
    named = {row: named_options(cells["option"]) for row, cells in doc_rows().items()}
    assert sum(map(len, named.values())) >= 20  # the parse finds them
    for row, keys in named.items():
        for key in keys:
            prefix = next(p for p in sections if key.startswith(p))
            assert key.removeprefix(prefix) in sections[prefix], f"row {row}: {key}"


def test_the_plans_hold_every_stage(plans: dict[str, Plan]) -> None:
    """Each dry run plans the three pre-trainings, grams and fine-tunes of every task, every merge."""
    for name, plan in plans.items():
        assert {j.stage for j in plan.jobs} >= STAGES, name
        assert len(plan.all("pretrain")) == 3 and len(plan.all("grams")) == len(TASK_NAMES), name
        for run, settings in plan.pretrain_runs():
            build(PretrainSettings, settings, where=run)  # what the stage itself validates
        for task in TASK_NAMES:
            build(FinetuneSettings, plan.finetune(task).settings, where=task)
            build(GramsSettings, plan.grams(task), where=task)


# ---------------------------------------------------------------------------------------------- pre-training
def test_row01_itc_gather(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", "upstream"), ("fixed", "exact"), ("default", "exact")):
        assert {run: s["itc_gather"] for run, s in plans[name].pretrain_runs()} == dict.fromkeys(PRETRAIN_RUNS, want)
    assert default_of(PretrainRecipe, "itc_gather") == "exact"


def test_row02_temperature_clamp(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", None), ("fixed", 100.0), ("default", 100.0)):
        assert all(s["logit_scale_max"] == want for _, s in plans[name].pretrain_runs()), name
    assert default_of(PretrainRecipe, "logit_scale_max") == 100.0


def test_row03_beit_weights(plans: dict[str, Plan]) -> None:
    shipped = yaml.safe_load((ROOT / "profiles/slurm/paper.yaml").read_text())["pretrain"]["init"]
    assert shipped.startswith("beit:") and shipped.endswith("/beit_base_patch16_224_pt22k_ft22k.pth")
    for name in ("paper", "fixed"):  # the site overlay names an existing file in its place
        plan = plans[name]
        assert plan.pretrain("seed")["init"].startswith("beit:") and plan.pretrain("ma")["init"].startswith("beit:")
        assert plan.pretrain("ms_modality_specific")["init"] == "seed:results/pretrain/seed.safetensors"
    assert plans["default"].pretrain("seed")["init"] == plans["default"].pretrain("ma")["init"] == "scratch"


def test_row04_coco_captions_in_pretraining(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", False), ("fixed", True), ("default", True)):
        assert all(s["coco_restval"] is want and "coco" in s["datasets"] for _, s in plans[name].pretrain_runs())
    assert default_of(PretrainRecipe, "coco_restval") is True


def test_row05_caption_dedup(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", True), ("fixed", False), ("default", False)):
        assert all(s["dedup_captions"] is want for _, s in plans[name].pretrain_runs()), name
    assert default_of(PretrainRecipe, "dedup_captions") is False


def test_row06_randaugment(plans: dict[str, Plan]) -> None:
    """Augmentation on in the paper's pre-training and fine-tuning (off in the embedded default); the
    transform is the upstream-style RandomAugment, with AutoContrast and Sharpness doing the intended
    arithmetic (a stretch to [0, 255]; a clipped blend, as Pillow's) rather than the port's two slips."""
    for name, want in (("paper", True), ("fixed", True), ("default", False)):
        assert all(s["augment"] is want for _, s in plans[name].pretrain_runs()), name
        assert all(plans[name].finetune(t).settings["augment"] is want for t in TASK_NAMES), name
    assert inspect.signature(train_transform).parameters["randaug_style"].default == "upstream"
    assert NOT_SWITCHABLE in option(6)
    channel = torch.arange(50, 101, dtype=torch.uint8).repeat(51, 1)
    image = torch.stack([channel, channel.T, channel], -1).numpy()
    stretched = autocontrast(image)  # as Pillow's: [50, 100] → [0, 254] (truncated), no uint8 wrap-around
    assert (stretched == np.asarray(ImageOps.autocontrast(Image.fromarray(image)))).all()
    assert stretched.min() == 0 and stretched.max() == 254 and (np.diff(stretched[0, :, 0].astype(int)) > 0).all()
    rng = torch.Generator().manual_seed(0)
    noisy = torch.randint(0, 256, (12, 12, 3), generator=rng, dtype=torch.uint8).numpy()
    for factor in (0.0, 1.36, 3.0):  # 3.0 overshoots [0, 255]: clipped, never wrapped
        pillow = ImageEnhance.Sharpness(Image.fromarray(noisy)).enhance(factor)
        assert (sharpness(noisy, factor) == np.asarray(pillow)).all()


def test_row07_decay_of_named_parameters(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", True), ("fixed", False), ("default", False)):
        assert all(s["decay_norm_and_scale"] is want for _, s in plans[name].pretrain_runs()), name
    assert default_of(PretrainRecipe, "decay_norm_and_scale") is False


def test_row08_decay_of_expert_norms(plans: dict[str, Plan]) -> None:
    """The same switch as row 7, here on the MS run whose per-expert norms it concerns."""
    for name, want in (("paper", True), ("fixed", False), ("default", False)):
        ms = plans[name].pretrain("ms_modality_specific")
        assert ms["sharing"] == "modality_specific" and ms["decay_norm_and_scale"] is want, name
    assert "pretrain.decay_norm_and_scale" in option(8)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    words = "red green blue circle square left of the unaffable xylophone is there a".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 9)) for i in range(400)]
    return load_tokenizer(train_wordpiece(texts, tmp_path_factory.mktemp("tok"), vocab_size=60))


TEXTS = ["a red circle", "the unaffable xylophone is left of the blue square", "red", "", "there is a square"]


def test_row09_mlm_masking(plans: dict[str, Plan], tokenizer: Any) -> None:
    """Paper: upstream's fixed budget of round(0.25·40) = 10 candidates on text padded to 40, pads among them
    (drawn, never predicted); vlmerge: each real word with p = 0.25, at least one per non-empty text."""
    for name, want in (
        ("paper", "upstream_fixed_budget"),
        ("fixed", "bernoulli_words"),
        ("default", "bernoulli_words"),
    ):
        assert all(s["mlm_masking"] == want and s["mlm_prob"] == 0.25 for _, s in plans[name].pretrain_runs()), name
    assert default_of(PretrainRecipe, "mlm_masking") == "bernoulli_words"
    words = WholeWordMaskCollator(tokenizer, mlm_prob=0.25, seed=0)
    budget = WholeWordMaskCollator(tokenizer, mlm_prob=0.25, seed=0, masking="upstream_fixed_budget")
    with_word = {"bernoulli_words": 0, "upstream_fixed_budget": 0}
    draws = 200
    for _ in range(draws):
        for mode, collator, padded in (("bernoulli_words", words, False), ("upstream_fixed_budget", budget, True)):
            text = encode_texts(tokenizer, TEXTS, max_length=40, pad_to_max_length=padded)
            assert text.input_ids.shape[1] == (40 if padded else max(len(tokenizer(t)["input_ids"]) for t in TEXTS))
            _, labels = collator(text)
            chosen = labels != IGNORE_INDEX
            assert not chosen[text.word_ids < 0].any()  # [PAD], [CLS], [SEP] never predicted
            if padded:
                assert (chosen.sum(dim=1) <= 10).all()  # the budget: round(0.25 · 40)
            with_word[mode] += int(chosen[2].any())  # "red": one word, 37+ pads beside it when padded
            if mode == "bernoulli_words":
                assert torch.equal(chosen.any(dim=1), (text.word_ids >= 0).any(dim=1))  # one word per text
    assert with_word["bernoulli_words"] == draws
    assert 0 < with_word["upstream_fixed_budget"] < draws / 2  # the pads spend most of the budget


def test_row10_text_padding(plans: dict[str, Plan], tokenizer: Any) -> None:
    """Texts padded to 40 in the paper's pre-training and pad-inclusive grams; to the batch's longest
    otherwise, and always in fine-tuning."""
    for name, want in (("paper", True), ("fixed", False), ("default", False)):
        assert all(s["pad_text_to_max"] is want for _, s in plans[name].pretrain_runs()), name
        assert all(plans[name].grams(t)["include_pad"] is want for t in TASK_NAMES), name
    assert default_of(PretrainRecipe, "pad_text_to_max") is False
    assert "fine-tuning: not switchable" in option(10)
    longest = max(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    batch = encode_texts(tokenizer, TEXTS)
    assert batch.input_ids.shape == (len(TEXTS), longest) and longest < 40
    assert batch.attention_mask.sum(dim=1).tolist() == [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    padded = encode_texts(tokenizer, TEXTS, max_length=40, pad_to_max_length=True)
    assert padded.input_ids.shape == (len(TEXTS), 40)
    assert torch.equal(padded.attention_mask[:, :longest], batch.attention_mask)
    samples = [{"text": t} for t in TEXTS]
    for pad_to_max, length in ((True, 40), (False, longest)):  # the collator the stages use
        assert BatchCollator(tokenizer, 40, pad_to_max=pad_to_max)(samples)["text_ids"].shape == (len(TEXTS), length)


def branch_draws(drop_path_mode: str) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Per (block, sequence length), which samples kept each drop-path call's branch in one training pass
    of a pair through a tiny MS model (F = 2: block 1 runs the two halves apart)."""
    torch.manual_seed(0)
    model = create_model("tiny", "modality_specific", drop_path=0.9, drop_path_mode=drop_path_mode)
    model.train()
    kept: dict[tuple[int, int], list[torch.Tensor]] = {}

    def record(index: int) -> Any:
        def hook(module: Any, args: Any, out: torch.Tensor) -> None:
            kept.setdefault((index, out.shape[1]), []).append(out.flatten(1).abs().sum(dim=1) > 0)

        return hook

    for index, blk in enumerate(model.transformer.blocks):
        if index > 0:  # block 0 has rate 0: no DropPath module
            drop = blk.drop_path
            assert isinstance(drop, torch.nn.Module)
            drop.register_forward_hook(record(index))
    ids, mask = torch.randint(5, 50, (32, 6)), torch.ones(32, 6, dtype=torch.long)
    model.encode_pair(ids, mask, torch.randn(32, 3, 48, 48))
    return kept


def test_row11_stochastic_depth_below_fusion(plans: dict[str, Plan]) -> None:
    """Below F the text and image halves of a pair run as two sequences: ``per_sample`` (upstream's one mask
    over the concatenation) keeps or drops a sample's branch in both halves together, ``per_modality`` draws
    each half on its own."""
    for name, want in (("paper", "per_sample"), ("fixed", "per_modality"), ("default", "per_modality")):
        for _, settings in plans[name].pretrain_runs():  # the checkpoint's config keeps it for fine-tuning
            assert settings["drop_path_mode"] == want and checkpoint_config(settings).drop_path_mode == want
    assert default_of(PretrainRecipe, "drop_path_mode") == "per_modality"
    assert model_config("tiny").drop_path_mode == "per_modality"
    tokens = 1 + model_config("tiny").grid ** 2
    for mode in ("per_sample", "per_modality"):
        kept = branch_draws(mode)
        assert sorted(kept) == [(1, 6), (1, tokens), (2, 6 + tokens), (3, 6 + tokens)]
        text, image = kept[(1, 6)], kept[(1, tokens)]  # [attention branch, MLP branch] of block 1
        assert len(text) == len(image) == 2
        together = all(torch.equal(t, i) for t, i in zip(text, image, strict=True))
        assert together is (mode == "per_sample"), mode
        assert not all(t.all() for t in text)  # the draws did drop something


def test_row12_precision(plans: dict[str, Plan]) -> None:
    """fp16 AMP under the paper profile, with the attention logits, bias and softmax in fp32."""
    for name, want in (("paper", "16"), ("fixed", "bf16"), ("default", "auto")):
        assert all(s["precision"] == want for _, s in plans[name].pretrain_runs()), name
        assert all(plans[name].finetune(t).settings["precision"] == want for t in TASK_NAMES), name
    assert default_of(TrainingRecipe, "precision") == "auto"
    assert set(get_args(TrainingRecipe.model_fields["precision"].annotation)) == {"auto", "32", "bf16", "16"}
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    bias = torch.randn(1, 3, 5, 5, generator=g)
    naive = torch.softmax(q @ k.transpose(-2, -1) / 2 + bias, dim=-1) @ v  # √(D/H) = 2
    torch.testing.assert_close(attention_fp32_logits(q, k, v, bias), naive)
    assert not fp16_autocast("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fp16_autocast("cpu")  # bf16 autocast keeps the fused path


def test_row13_large_fusion_start(plans: dict[str, Plan]) -> None:
    assert PRESETS["large"].num_layers == 24 and model_config("large").fusion_start == 21
    assert "fusion_start_layer" in MODEL_KEYS  # the override of `model.overrides`
    for name, preset, layers in (("paper", "base", 12), ("fixed", "base", 12), ("default", "tiny", 4)):
        for _, settings in plans[name].pretrain_runs():
            assert settings["preset"] == preset and "fusion_start_layer" not in settings["model"], name
            assert checkpoint_config(settings).fusion_start == layers - 2


def test_row14_itm_hard_negative_draw() -> None:
    """Softmax over the non-positive columns: even where the positive takes all float32 mass, every row
    still draws a negative, uniformly among equal scores, never the positive."""
    assert not_switchable(14)
    row = torch.tensor([100.0, -100.0, -100.0, -100.0])
    assert torch.softmax(row, 0)[1:].sum() == 0  # softmax-then-zero would leave nothing to draw
    sims, positive = row.repeat(3000, 1), torch.zeros(3000, dtype=torch.long)
    drawn = sample_hard_negatives(sims, sims, positive, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn.neg_text_for_image, minlength=4).tolist()
    assert counts[0] == 0 and all(abs(c - 1000) < 150 for c in counts[1:])


# ---------------------------------------------------------------------------------------------- fine-tuning
def resolved(job: Job, key: str) -> Any:
    """A per-task setting as the stage resolves it: the job's value, or the task's paper value when None."""
    settings = job.settings
    value = settings[key]
    return getattr(TASKS[settings["task"]].settings, key) if value is None else value


def split_options(job: Job) -> SplitOptions:
    """The split choices the fine-tuning stage makes of the job's settings."""
    return _split_options(build(FinetuneSettings, job.settings, where="finetune"))


def test_row15_horizontal_flip(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", True), ("fixed", False), ("default", False)):
        for task in ("vqa", "nlvr2"):
            assert resolved(plans[name].finetune(task), "horizontal_flip") is want, (name, task)
        for task in ("coco", "f30k"):  # retrieval flips everywhere (its captions are not about sides)
            assert resolved(plans[name].finetune(task), "horizontal_flip") is True, (name, task)
    assert not TASKS["vqa"].settings.horizontal_flip and not TASKS["nlvr2"].settings.horizontal_flip
    assert default_of(TaskOverrides, "horizontal_flip") is None


def test_row16_vqa_training_split(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", ("train", "trainable_val")), ("fixed", ("train",)), ("default", ("train",))):
        job = plans[name].finetune("vqa")
        assert TASKS["vqa"].train_splits(split_options(job)) == want, name
    assert default_of(FinetuneRecipe, "vqa_trainable_val") is False


def test_row17_f30k_training_split(plans: dict[str, Plan]) -> None:
    for name, want in (("paper", ("train", "val")), ("fixed", ("train",)), ("default", ("train",))):
        job = plans[name].finetune("f30k")
        assert TASKS["f30k"].train_splits(split_options(job)) == want, name
        TASKS["f30k"].selection_split(split_options(job))  # a combination the stage accepts
    assert default_of(FinetuneRecipe, "f30k_train_val") is False


def test_row18_vqa_embedding_dropout(plans: dict[str, Plan]) -> None:
    """drop_rate 0.15 for VQA: drop-path always (the task's value), the text-embedding dropout only under
    the paper profile (otherwise None: the checkpoint's 0.1)."""
    for name, want in (("paper", 0.15), ("fixed", None), ("default", None)):
        job = plans[name].finetune("vqa")
        assert resolved(job, "drop_path") == 0.15 and resolved(job, "embed_dropout") == want, name
        assert all(resolved(plans[name].finetune(t), "embed_dropout") is None for t in ("coco", "f30k", "nlvr2"))
    assert default_of(TaskOverrides, "embed_dropout") is None


def test_row19_official_vqa_accuracy(plans: dict[str, Plan]) -> None:
    """The official rule scores against the raw human answers (so each VQA evaluation is given the raw
    annotations) and compares raw strings when the ten humans agree."""
    for plan in plans.values():
        for job in plan.all("evaluate"):
            assert ("--vqa-annotations" in job.flags) == (job.flag("--task") == "vqa")
    assert question_accuracy("yes", ["Yes"] * 10) == 0.0  # the default mode is the official one
    assert question_accuracy("yes", ["Yes"] * 10, mode="always_normalize") == 1.0
    assert question_accuracy("YES", ["Yes"] * 5 + ["yes"] * 5) == 1.0  # disagreeing: normalised
    assert 'mode="always_normalize"' in option(19)


def test_row20_model_selection_splits(plans: dict[str, Plan]) -> None:
    upstream = {"vqa": "rest_val", "coco": "test", "f30k": "test", "nlvr2": "test1"}
    fixed = {"vqa": "rest_val", "coco": "val", "f30k": "val", "nlvr2": "dev"}
    for name, want in (("paper", upstream), ("fixed", fixed), ("default", fixed)):
        got = {t: TASKS[t].selection_split(split_options(plans[name].finetune(t))) for t in TASK_NAMES}
        assert got == want, name
    for name, restval in (("paper", False), ("fixed", True), ("default", True)):
        coco = TASKS["coco"].train_splits(split_options(plans[name].finetune("coco")))
        assert coco == (("train", "restval") if restval else ("train",)), name
    defaults = (default_of(FinetuneRecipe, k) for k in ("select_on", "f30k_val_is_test", "coco_train_restval"))
    assert tuple(defaults) == ("val", False, True)


def test_row21_recall_ties() -> None:
    """A candidate scoring the same as the positive ranks before it."""
    assert not_switchable(21)
    out = retrieval_recall(torch.zeros(4, 4), torch.arange(4), ks=(1, 3, 4))
    assert out == {"ir_r1": 0.0, "ir_r3": 0.0, "ir_r4": 1.0, "tr_r1": 0.0, "tr_r3": 0.0, "tr_r4": 1.0}
    sims = torch.tensor([[0.5, 0.5], [0.5, 0.1]])  # text 0's positive (image 0) ties image 1
    assert retrieval_recall(sims, torch.tensor([0, 1]), ks=(1,))["ir_r1"] == 0.0


# ---------------------------------------------------------------------------------------------- merging
def test_row22_main_table_merge_settings(plans: dict[str, Plan]) -> None:
    released = {"alpha": "1.0", "normalize": "sum", "unseen": "skip"}
    for name in ("paper", "fixed"):  # paper-fixed leaves the merges alone
        plan = plans[name]
        assert plan.merge("interpolation") == {"ratio": "0.5"}
        assert plan.merge("arithmetic") == {"lam": "0.75"}
        for task in TASK_NAMES:  # retrieval v, l; VQA vl; NLVR2 all three (no used_experts_only)
            used = {} if task == "nlvr2" else {"used_experts_only": task}
            assert plan.merge("regmean", task) == released | used, (name, task)
    plan = plans["default"]
    assert plan.merge("interpolation") == {"ratio": "0.5"} and plan.merge("arithmetic") == {"lam": "0.5"}
    for task in TASK_NAMES:
        assert plan.merge("regmean", task) == {"alpha": "0.9", "normalize": "mean", "used_experts_only": task}
    # used_experts_only: task_upstream vs task differ on NLVR2 only (vl alone under `task`).
    assert PER_TASK_EXPERTS["task_upstream"]["nlvr2"] is None and PER_TASK_EXPERTS["task"]["nlvr2"] == "nlvr2"


def test_row23_modality_arithmetic(plans: dict[str, Plan]) -> None:
    for name in ("paper", "fixed"):
        assert "mode" not in plans[name].merge("arithmetic")
        assert plans[name].merge("arithmetic_upstream")["mode"] == "upstream_sequential"
        assert all(
            plans[name].merge("arithmetic_upstream_used", t)["mode"] == "upstream_sequential" for t in TASK_NAMES
        )
    assert not [j for j in plans["default"].all("merge") if "mode" in j.params]
    mode = {p.name: p.default for p in METHOD_INFO["arithmetic"].params}["mode"]
    assert mode == "formula"
    # The two modes on one parameter: the recursion w ← w + λ(θ_m − w) against the formula.
    ms, seed, layout = pico_states()
    key = "transformer.blocks.0.mlp.{}fc1.weight"
    base, v, l_ = seed[key.format("")], ms[key.format("v.")], ms[key.format("l.")]
    recursion = merge("arithmetic", ms, seed_state=seed, lam=0.75, mode="upstream_sequential")[key.format("")]
    torch.testing.assert_close(recursion, (base + 0.75 * (v - base)) + 0.75 * (l_ - (base + 0.75 * (v - base))))
    formula = merge("arithmetic", ms, seed_state=seed, lam=0.75)[key.format("")]
    torch.testing.assert_close(formula, base + 0.75 * ((v - base) + (l_ - base)))


def test_row24_single_expert_arithmetic(plans: dict[str, Plan]) -> None:
    for name in ("paper", "fixed"):
        for task in TASK_NAMES:
            params = plans[name].merge("arithmetic_upstream_used", task)
            assert params["single_expert"] == "copy" and params.get("used_experts_only") == (
                None if task == "nlvr2" else task
            )
    arithmetic = [j.params for j in plans["default"].all("merge") if j.flag("--method") == "arithmetic"]
    assert arithmetic == [{"lam": "0.5"}]  # every expert merged: no layer keeps one
    assert {p.name: p.default for p in METHOD_INFO["arithmetic"].params}["single_expert"] == "formula"
    # A fusion layer of VQA keeps vl alone: copy gives θ_vl (coefficient 1), the formula θ₀ + λ(θ_vl − θ₀).
    ms, seed, layout = pico_states()
    key = f"transformer.blocks.{layout.fusion_start}.attn.{{}}qkv.weight"
    base, vl = seed[key.format("")], ms[key.format("vl.")]
    common: dict[str, Any] = dict(lam=0.75, mode="upstream_sequential", used_experts_only="vqa")
    copied = merge("arithmetic", ms, seed_state=seed, single_expert="copy", **common)
    assert torch.equal(copied[key.format("")], vl)
    formula = merge("arithmetic", ms, seed_state=seed, **common)
    torch.testing.assert_close(formula[key.format("")], base + 0.75 * (vl - base))


def test_row25_gram_collection(plans: dict[str, Plan]) -> None:
    upstream = {"split": "val", "max_samples": None, "batch_size": 160, "include_pad": True, "image_size": 224}
    fixed = upstream | {"split": "train", "include_pad": False}
    default = {"split": "train", "max_samples": 1000, "batch_size": 32, "include_pad": False, "image_size": None}
    # How the products are summed is not a fidelity row (float32 products flushed into float64 sums everywhere).
    upstream, fixed, default = ({**g, "products": "float32"} for g in (upstream, fixed, default))
    for name, want in (("paper", upstream), ("fixed", fixed), ("default", default)):
        assert {t: plans[name].grams(t) for t in TASK_NAMES} == dict.fromkeys(TASK_NAMES, want), name
        normalize = "mean" if name == "default" else "sum"
        assert all(plans[name].merge("regmean", t)["normalize"] == normalize for t in TASK_NAMES)
    assert {k: default_of(GramsSettings, k) for k in ("split", "batch_size", "include_pad", "image_size")} == {
        "split": "train",
        "batch_size": 32,
        "include_pad": False,
        "image_size": None,
    }


def pico_states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Any]:
    """Random MS and seed state dicts of the tests' ``pico`` model (conftest.py)."""
    shapes = create_model("pico", "modality_specific").state_dict()
    g = torch.Generator().manual_seed(0)
    ms = {k: torch.randn(v.shape, generator=g) for k, v in shapes.items()}
    seed = {k: torch.randn(v.shape, generator=g) for k, v in create_model("pico", "shared").state_dict().items()}
    return ms, seed, expert_layout(model_config("pico"), "modality_specific")


def pico_grams(layout: Any) -> GramStats:
    """Well-conditioned random grams for every hook point of ``layout``."""
    g, pico = torch.Generator().manual_seed(1), model_config("pico")
    xtx, sums, counts = {}, {}, {}
    for name, _ in gram_targets(layout):
        dim = pico.mlp_dim if name.endswith("fc2") else pico.dim
        x = torch.randn(3 * dim, dim, generator=g, dtype=torch.float64)
        xtx[name], sums[name], counts[name] = x.T @ x, x.sum(0), x.shape[0]
    return GramStats(xtx, sums, counts)


def test_row26_missing_gram(plans: dict[str, Plan]) -> None:
    """A zero-token gram: skipped under the paper profile, an error by default; a missing gram is an error
    naming its layer and expert in every case (never a silent plain average)."""
    assert all(plans[n].merge("regmean", t)["unseen"] == "skip" for n in ("paper", "fixed") for t in TASK_NAMES)
    assert all("unseen" not in plans["default"].merge("regmean", t) for t in TASK_NAMES)
    assert {p.name: p.default for p in METHOD_INFO["regmean"].params}["unseen"] == "error"
    assert "a missing gram: not yet switchable" in option(26)
    ms, _, layout = pico_states()
    grams = pico_grams(layout)
    gone = "transformer.blocks.1.mlp.l.fc1"
    assert gone in grams.xtx
    missing = GramStats(
        {k: v for k, v in grams.xtx.items() if k != gone},
        {k: v for k, v in grams.sums.items() if k != gone},
        {k: v for k, v in grams.counts.items() if k != gone},
    )
    for unseen in ("error", "skip"):
        with pytest.raises(GramsError, match=r"layer 1 \(expert l\)"):
            merge("regmean", ms, grams=missing, unseen=unseen)


def test_row27_regmean_reaches_every_downstream_run(plans: dict[str, Plan]) -> None:
    """Merging is its own stage: each fine-tune of a merge starts from the merged file, and each evaluation
    reads that fine-tune's output (no run re-creates the model from unmerged weights)."""
    assert not_switchable(27)
    for plan in plans.values():
        merged = {j.flag("--out") for j in plan.all("merge")}
        for task in TASK_NAMES:
            for method in ("regmean", "interpolation", "arithmetic"):
                init = plan.finetune(task, method).flag("--init")
                assert init in merged and init.endswith(f"/{method}.safetensors"), (task, method)
                evaluate = plan.find("evaluate", **{"--task": task, "--method": method})
                assert evaluate.flag("--ckpt") == f"results/finetune/{task}/{method}.safetensors"


def test_row28_layer_count() -> None:
    """Key mappings come from the layout: a 14-layer model merges layers 12 and 13 too (upstream's
    ``range(12)`` would leave them)."""
    assert not_switchable(28)
    shapes = create_model("pico", "modality_specific", num_layers=14).state_dict()
    g = torch.Generator().manual_seed(2)
    ms = {k: torch.randn(v.shape, generator=g) for k, v in shapes.items()}
    layout = infer_layout(ms)
    assert (layout.num_layers, layout.fusion_start) == (14, 12)
    out = merge("interpolation", ms, ratio=0.5)
    assert set(out) == set(create_model("pico", "shared", num_layers=14).state_dict())
    key = "transformer.blocks.{}.mlp.{}fc2.weight"
    for layer in (12, 13):
        v, l_, vl = (ms[key.format(layer, f"{m}.")] for m in ("v", "l", "vl"))
        torch.testing.assert_close(out[key.format(layer, "")], 0.5 * 2 / 3 * v + 0.5 * 2 / 3 * l_ + vl / 3)


def test_row29_regmean_solve() -> None:
    """A float64 Cholesky solve: exact on a well-conditioned system (no ridge), a recorded ridge where the
    summed grams are singular."""
    assert "the explicit inverse: not yet switchable" in option(29)
    assert "max_cond" in {p.name for p in METHOD_INFO["regmean"].params}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    a, b = x.T @ x, torch.randn(8, 3, generator=g, dtype=torch.float64)
    well = solve_psd(a, b)
    assert well.ridge == 0.0
    torch.testing.assert_close(well.x, torch.linalg.inv(a) @ b)
    low_rank = x[:, :3] @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    singular = solve_psd(low_rank.T @ low_rank, b)
    assert singular.ridge > 0 and singular.record()["ridge"] == singular.ridge
    assert torch.isfinite(singular.x).all()


# ---------------------------------------------------------------------------------------------- data
def test_row30_vqa_answer_labels(plans: dict[str, Plan]) -> None:
    """Label ids in upstream's first-seen order either way; the human answers counted raw (paper) or
    normalised (paper-fixed, embedded default) — the ``data.prepare`` block every prepare job receives."""
    for name, want in (("paper", "raw"), ("fixed", "normalized"), ("default", "normalized")):
        assert plans[name].prepare("vqa")["vqa_answer_counting"] == want, name
    assert default_of(PrepareSettings, "vqa_answer_counting") == "normalized"
    # Label ids: normalised majority answers in first-seen order (train, then val), kept at min_count.
    assert build_vocabulary(["Two", "cat", "2", "dog", "dog", "dog", "cat"], min_count=2) == ["2", "cat", "dog"]
    label_of = {"2": 0, "cat": 1}
    humans = ["Two", "2", "2", "cat", "two"]
    assert score_answers(humans, label_of, counting="raw") == (["2", "cat"], [0, 1], [0.6, 0.3])
    assert score_answers(humans, label_of, counting="normalized") == (["2", "cat"], [0, 1], [1.0, 0.3])


def test_row31_deterministic_ordering(tmp_path: Path) -> None:
    """Rows sorted by image id whatever the raw files' order; rest_val = the last N images by id."""
    assert not_switchable(31)
    raw = tmp_path / "raw"
    generate(raw, seed=0, size="tiny", datasets=["vqa"], counts={"vqa": {"val": 10, "test": 2, "test-dev": 2}})
    options = ConvertOptions(min_answer_count=1, rest_val_images=4)
    convert("vqa", raw / "vqa", tmp_path / "a", options)
    for path in (raw / "vqa").glob("*.json"):
        data = json.loads(path.read_text())
        for key in ("questions", "annotations"):
            if key in data:
                data[key] = data[key][::-1]
        path.write_text(json.dumps(data))
    convert("vqa", raw / "vqa", tmp_path / "b", options)
    convert("vqa", raw / "vqa", tmp_path / "c", options)

    def table(root: Path, split: str) -> pa.Table:
        with pa.memory_map(str(root / FILES["vqa"][split])) as source:
            return pa.ipc.open_file(source).read_all()

    val = table(tmp_path / "a", "val")["image_id"].to_pylist()
    assert val == sorted(val) and len(val) == 10
    assert table(tmp_path / "a", "rest_val")["image_id"].to_pylist() == val[-4:]
    assert table(tmp_path / "a", "trainable_val")["image_id"].to_pylist() == val[:-4]
    for split in ("train", "val", "rest_val", "trainable_val"):
        # Reversed raw files: the same rows in the same order (label ids follow first-seen order, row 30).
        a, b = (table(tmp_path / d, split).drop_columns(["answer_labels"]) for d in ("a", "b"))
        assert a.equals(b), split
        name = FILES["vqa"][split]
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), split


def test_row32_missing_inputs(plans: dict[str, Plan], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in plans:
        assert all(plans[name].prepare(d)["strict"] is False for d in ("coco", "vqa", "gcc")), name
    assert default_of(PrepareSettings, "strict") is False
    assert "missing inputs: not yet switchable" in option(32)
    empty = tmp_path / "coco"
    empty.mkdir()
    assert prepare_main(["--dataset", "coco", "--raw", str(empty), "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "missing" in message and str(empty) in message
    assert not (tmp_path / "out" / "coco.manifest.json").exists()


def test_row33_contrastive_head_names() -> None:
    """``itc_*`` heads with temperatures of shape [1]; the export gives upstream's ``ifm_*`` and 0-d ones."""
    assert not_switchable(33)
    model = create_model("tiny", "shared", Heads(itc=True, itc_vl=True))
    state = model.state_dict()
    assert {"itc_text_proj.fc.weight", "itc_vl_image_proj.fc.weight"} <= set(state)
    assert not [k for k in state if k.startswith("ifm_")]
    assert state["logit_scale"].shape == state["logit_vl_scale"].shape == (1,)
    upstream = to_vlmerging_state(state, model.config, model.config.max_text_len)
    assert {"ifm_text_proj.fc.weight", "ifm_vl_image_proj.fc.weight"} <= set(upstream)
    assert not [k for k in upstream if k.startswith("itc_")]
    assert upstream["logit_scale"].shape == upstream["logit_vl_scale"].shape == ()
