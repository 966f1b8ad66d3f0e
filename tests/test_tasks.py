"""Tasks: registry settings, forward/loss shapes, NLVR2 token-type routing, task models from sidecars,
sharded evaluation, the VQA submission, model selection."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

import pytest
import torch

from tests.builders import build_task_data, tiny_model
from vlmerge.catalog.names import TASKS as CATALOG_TASKS
from vlmerge.data.collate import BatchCollator
from vlmerge.data.tokenizer import load_tokenizer
from vlmerge.data.transforms import eval_transform
from vlmerge.finetune.config import FinetuneSettings, TaskOverrides
from vlmerge.finetune.module import FinetuneConfig, FinetuneModule
from vlmerge.finetune.selection import BestWeights, Selection
from vlmerge.model import Heads, ModelConfigError, Sharing
from vlmerge.model.checkpoint import save_model
from vlmerge.tasks import (
    TASKS,
    SplitOptions,
    TaskError,
    TaskSettings,
    concat_rows,
    get_task,
    merge_rows,
    shard_indices,
    task_model,
)
from vlmerge.tasks.evaluation import evaluation_rows
from vlmerge.tasks.shards import Indexed
from vlmerge.tasks.vqa import answer_vocabulary
from vlmerge.tasks.vqa_eval import submission


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_task_data(tmp_path_factory.mktemp("task-data"))


@pytest.fixture(scope="module")
def tokenizer(data):
    return load_tokenizer(data[1])


def batch_of(task_name: str, arrow: Path, tokenizer, size: int = 4, split: str | None = None) -> dict:
    task = get_task(task_name)
    dataset = (
        task.train_dataset(arrow, task.train, eval_transform(32))
        if split is None
        else task.eval_sides(arrow, split, eval_transform(32))[0]
    )
    samples = [Indexed(dataset)[i] for i in range(size)]
    return BatchCollator(tokenizer)(samples)


# --- registry and splits ------------------------------------------------------------------------------


def test_registry_holds_the_paper_settings() -> None:
    assert sorted(TASKS) == ["coco", "f30k", "nlvr2", "vqa"]
    vqa, coco, f30k, nlvr2 = (TASKS[t].settings for t in ("vqa", "coco", "f30k", "nlvr2"))
    assert (vqa.image_size, vqa.global_batch, vqa.lr, vqa.epochs, vqa.drop_path, vqa.head_lr_mult) == (
        480,
        128,
        3e-5,
        10,
        0.15,
        10.0,
    )
    assert (coco.image_size, coco.global_batch, coco.lr, coco.epochs) == (384, 640, 6.25e-6, 20)
    assert (f30k.image_size, f30k.global_batch, f30k.lr, f30k.epochs) == (384, 128, 6.25e-7, 40)
    assert (nlvr2.image_size, nlvr2.global_batch, nlvr2.lr, nlvr2.epochs) == (384, 128, 5e-5, 10)
    assert not vqa.horizontal_flip and not nlvr2.horizontal_flip and coco.horizontal_flip
    assert [TASKS[t].settings.headline for t in ("vqa", "coco", "nlvr2")] == ["vqa_score", "mean_recall", "accuracy"]
    with pytest.raises(TaskError, match="unknown task"):
        get_task("gqa")
    with pytest.raises(TypeError):  # keyword-only: a misordered row of numbers cannot slip in
        TaskSettings(480, 128, 3e-5, 10, 0.15, None, 10.0, False, "vqa_score")  # type: ignore[misc]


def test_the_stage_settings_know_every_task_and_its_overrides() -> None:
    """The torch-free settings (vlmerge.finetune.config) name the registry's tasks and TaskSettings' keys."""
    overridable = set(TaskOverrides.model_fields) - {"steps", "batch_size", "val_every"}
    assert set(TASKS) == set(CATALOG_TASKS) == set(get_args(FinetuneSettings.model_fields["task"].annotation))
    assert overridable == {f.name for f in dataclasses.fields(TaskSettings)} - {"headline"}


def test_split_options_reproduce_the_upstream_quirks() -> None:
    default, quirks = (
        SplitOptions(),
        SplitOptions(
            select_on="test",
            f30k_val_is_test=True,
            coco_train_restval=False,
            vqa_trainable_val=True,
            f30k_train_val=True,
        ),
    )
    assert TASKS["coco"].train_splits(default) == ("train", "restval")
    assert TASKS["coco"].train_splits(quirks) == ("train",)
    assert TASKS["coco"].selection_split(quirks) == "test"
    assert TASKS["f30k"].train_splits(default) == ("train",) and TASKS["f30k"].selection_split(default) == "val"
    assert TASKS["f30k"].selection_split(SplitOptions(f30k_val_is_test=True)) == "test"
    assert TASKS["f30k"].train_splits(quirks) == ("train", "val") and TASKS["f30k"].selection_split(quirks) == "test"
    assert TASKS["f30k"].selection_split(SplitOptions(f30k_train_val=True, select_on="test")) == "test"
    assert TASKS["coco"].train_splits(SplitOptions(f30k_train_val=True)) == ("train", "restval")  # F30K only
    with pytest.raises(TaskError, match="cannot select on it"):  # never select on samples it trained on
        TASKS["f30k"].selection_split(SplitOptions(f30k_train_val=True))
    assert TASKS["nlvr2"].selection_split(default) == "dev" and TASKS["nlvr2"].selection_split(quirks) == "test1"
    assert TASKS["vqa"].train_splits(quirks) == ("train", "trainable_val")
    # VQA's test answers are not public: select_on=test (upstream's, for retrieval and NLVR2) keeps rest_val.
    assert TASKS["vqa"].selection_split(default) == TASKS["vqa"].selection_split(quirks) == "rest_val"
    with pytest.raises(TaskError):
        SplitOptions(select_on="dev")


# --- forward, loss, evaluation rows -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vqa", "coco", "nlvr2"])
def test_loss_and_rows_shapes_and_gradients(name: str, data, tokenizer) -> None:
    arrow = data[0]
    task = get_task(name)
    model = tiny_model(len(tokenizer), "modality_specific", task.heads(arrow))
    batch = batch_of(name, arrow, tokenizer)
    out = task.loss(model, batch)
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    out["loss"].backward()
    head = getattr(model, task.head_modules[0])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with torch.no_grad():
        sides = range(2) if name == "coco" else range(1)
        for side in sides:
            rows = task.eval_rows(model.eval(), batch, side)
            assert torch.equal(rows["index"], torch.arange(4))
            assert all(v.shape[0] == 4 for v in rows.values())
    if name == "vqa":
        assert model.vqa_classifier[-1].out_features == len(answer_vocabulary(arrow)) == batch["target"].shape[1]
        assert rows["pred"].dtype == torch.long and ((rows["score"] >= 0) & (rows["score"] <= 1)).all()
    if name == "coco":
        assert rows["feat"].shape == (4, 64) and torch.allclose(rows["feat"].norm(dim=1), torch.ones(4))


def test_nlvr2_second_image_uses_token_type_2(data, tokenizer) -> None:
    task = get_task("nlvr2")
    model = tiny_model(len(tokenizer), heads=task.heads(data[0])).eval()
    assert model.token_type_embeddings.num_embeddings == 3
    assert torch.equal(model.token_type_embeddings.weight[2], model.token_type_embeddings.weight[1])
    batch = batch_of("nlvr2", data[0], tokenizer)
    ids, mask = batch["text_ids"], batch["text_mask"]
    with torch.no_grad():
        first = model.encode_pair(ids, mask, batch["image_0"], 1)
        second = model.encode_pair(ids, mask, batch["image_1"], 2)
        model.token_type_embeddings.weight[2] += 1.0  # touch only the second image's row
        assert torch.equal(model.encode_pair(ids, mask, batch["image_0"], 1), first)
        assert not torch.allclose(model.encode_pair(ids, mask, batch["image_1"], 2), second)
    model.zero_grad()
    task.loss(model.train(), batch)["loss"].backward()
    grad = model.token_type_embeddings.weight.grad
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0


# --- the model a run starts from ----------------------------------------------------------------------


def test_task_model_reads_the_sharing_from_the_sidecar(data, tokenizer, tmp_path: Path) -> None:
    vocab = len(tokenizer)
    for sharing in ("modality_specific", "shared"):
        path = tmp_path / f"{sharing}.safetensors"
        save_model(path, tiny_model(vocab, sharing, Heads.pretraining()))
        model, meta = task_model(path, get_task("vqa").heads(data[0]), image_size=48, drop_path=0.2, embed_dropout=0.15)
        assert model.sharing is meta.sharing is Sharing(sharing)
        assert model.heads == Heads(vqa_answers=len(answer_vocabulary(data[0])))  # pre-training heads left out
        assert model.config.image_size == 48 and model.config.drop_path == 0.2
        assert model.config.embed_dropout == 0.15 and model.text_embeddings.dropout.p == 0.15
        assert meta.config.embed_dropout == 0.1  # the checkpoint's, BERT's hidden_dropout_prob
    coco_model, _ = task_model(path, get_task("coco").heads(data[0]))
    source = tiny_model(vocab, "shared", Heads.pretraining())
    for key in ("itc_text_proj.fc.weight", "logit_scale", "transformer.blocks.2.mlp.fc1.weight"):
        assert torch.equal(coco_model.state_dict()[key], source.state_dict()[key])  # same seed, loaded weights
    assert coco_model.heads == Heads(itc=True) and coco_model.config.image_size == 32
    # None keeps the checkpoint's rates.
    assert (coco_model.config.drop_path, coco_model.config.embed_dropout) == (0.0, 0.1)
    assert coco_model.text_embeddings.dropout.p == 0.1
    save_model(path, tiny_model(vocab, "shared", Heads(vqa_answers=3)))
    with pytest.raises(ModelConfigError, match="VQA head of 3 answers"):
        task_model(path, get_task("vqa").heads(data[0]))
    with pytest.raises(TaskError, match="patch size"):
        task_model(path, Heads(), image_size=40)


# --- sharded evaluation -------------------------------------------------------------------------------


def test_shards_pad_to_equal_blocks_and_merge_back() -> None:
    blocks = [shard_indices(7, r, 3) for r in range(3)]
    assert blocks == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]
    rows = concat_rows([{"index": torch.tensor(b), "value": torch.tensor(b) * 10} for b in blocks])
    merged = merge_rows(rows)
    assert torch.equal(merged["index"], torch.arange(7)) and torch.equal(merged["value"], torch.arange(7) * 10)


@pytest.mark.parametrize("name", ["f30k", "nlvr2", "vqa"])
def test_simulated_shards_give_the_one_shot_metrics(name: str, data, tokenizer) -> None:
    arrow, task = data[0], get_task(name)
    model = tiny_model(len(tokenizer), heads=task.heads(arrow)).eval()
    sides = task.eval_sides(arrow, task.val, eval_transform(32))
    collate = BatchCollator(tokenizer)
    one_shot = evaluation_rows(task, model, sides, collate, batch_size=3)
    world = next(w for w in (2, 3, 4, 5) if any(len(side) % w for side in sides))  # so that the last shard is padded
    shards = [evaluation_rows(task, model, sides, collate, batch_size=2, rank=r, world=world) for r in range(world)]
    merged = [merge_rows(concat_rows([shard[i] for shard in shards])) for i in range(len(sides))]
    for one, two in zip(one_shot, merged):
        assert torch.equal(one["index"], two["index"])
        for key in one:
            torch.testing.assert_close(one[key], two[key])
    assert task.metrics(merged, sides) == pytest.approx(task.metrics(one_shot, sides))
    metrics = task.metrics(one_shot, sides)
    assert task.settings.headline in metrics and all(0 <= v <= 1 for v in metrics.values())


def test_vqa_submission_lists_each_question_once(data, tokenizer) -> None:
    arrow, task = data[0], get_task("vqa")
    model = tiny_model(len(tokenizer), heads=task.heads(arrow)).eval()
    (dataset,) = sides = task.eval_sides(arrow, "test-dev", eval_transform(32))
    shards = [evaluation_rows(task, model, sides, BatchCollator(tokenizer), 2, rank=r, world=2)[0] for r in range(2)]
    padded = concat_rows(shards)
    assert len(padded["index"]) > len(dataset)  # duplicates from the padding
    entries = submission(merge_rows(padded), dataset, answer_vocabulary(arrow))
    ids = [e["question_id"] for e in entries]
    assert sorted(ids) == sorted(int(q) for q in dataset.question_id) and len(set(ids)) == len(dataset)
    assert all(e["answer"] in answer_vocabulary(arrow) for e in entries)
    with pytest.raises(TaskError, match="exactly once"):
        submission({k: v[:-1] for k, v in merge_rows(padded).items()}, dataset, answer_vocabulary(arrow))


# --- model selection ----------------------------------------------------------------------------------


def test_selection_keeps_the_first_best_and_prunes_weights(tmp_path: Path) -> None:
    selection = Selection("acc")
    assert selection.record(2, {"acc": 0.5}) and not selection.record(4, {"acc": 0.5})
    assert selection.record(6, {"acc": 0.7}) and not selection.record(8, {"acc": float("nan")})
    assert selection.best["step"] == 6 and selection.steps == [2, 4, 6, 8]
    assert selection.until(5).best["step"] == 2 and selection.until(5).steps == [2, 4]
    with pytest.raises(TaskError, match="lack the selection metric"):
        selection.record(10, {"loss": 1.0})
    history = tmp_path / "history.json"
    selection.save(history, "run-a")
    loaded = Selection.load(history, "run-a", "acc")
    assert loaded.steps == selection.steps and loaded.best == selection.best
    assert Selection.load(history, "run-b", "acc").history == []  # another run's history is not resumed
    assert Selection.load(tmp_path / "none.json", "run-a", "acc").history == []
    weights = BestWeights(tmp_path)
    for step in (2, 6):
        weights.save(step, {"w": torch.full((2,), float(step))})
    weights.prune({6})
    assert not weights.path(2).exists() and torch.equal(weights.load(6)["w"], torch.full((2,), 6.0))
    with pytest.raises(TaskError, match="missing"):
        weights.load(2)


def test_a_restart_keeps_the_validations_up_to_its_checkpoint(data, tokenizer, tmp_path: Path) -> None:
    task = get_task("nlvr2")
    module = FinetuneModule(
        tiny_model(len(tokenizer), heads=task.heads(data[0])),
        task,
        (),
        FinetuneConfig(max_steps=8, warmup_steps=0),
        tmp_path,
        run_id="run-a",
    )
    history = Selection("accuracy")
    for step, value in ((2, 0.6), (4, 0.5), (6, 0.9)):
        history.record(step, {"accuracy": value})
    history.save(tmp_path / "history.json", "run-a")
    # Lightning's step-4 checkpoint was written before the validation of step 4, which a restart skips.
    module.on_load_checkpoint({"finetune_run_id": "run-a", "global_step": 4})
    assert module.selection.steps == [2, 4] and module.selection.best["step"] == 2
    with pytest.raises(TaskError, match="another run"):
        module.on_load_checkpoint({"finetune_run_id": "run-b", "global_step": 4})
