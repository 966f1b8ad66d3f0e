"""Faults on the data side: a failed or killed `prepare` never damages the previous dataset, and a damaged table
is refused, naming the file, by the readers that pre-training and fine-tuning use."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

import vlmerge.data.arrow.manifest as manifest_module
import vlmerge.data.readers.table as table_module
from vlmerge.data.arrow import Conversion, ConvertOptions
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.arrow.writer import TableWriter
from vlmerge.data.readers import SKIP_SHA256_ENV, ArrowTables, CaptionPairs, ReaderError
from vlmerge.data.schema import CAPTION, FILES, manifest_name
from vlmerge.data.synth import generate
from vlmerge.data.transforms import eval_transform
from vlmerge.errors import ConfigError, InputError
from vlmerge.prepare.cli import main
from vlmerge.runtime.stage import run_stage
from vlmerge.tasks import TASKS

TRAIN = FILES["coco"]["train"]


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(root, seed=0, size="tiny", datasets=["coco", "sbu"])
    return root


@pytest.fixture
def coco(raw_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny raw COCO (48 images: train 24, restval 8, val 8, test 8)."""
    return Path(shutil.copytree(raw_root / "coco", tmp_path / "raw" / "coco"))


@pytest.fixture(autouse=True)
def checks_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SKIP_SHA256_ENV, raising=False)


def argv(raw: Path, out: Path, *extra: str, dataset: str = "coco") -> list[str]:
    return ["--dataset", dataset, "--raw", str(raw), "--out", str(out), *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(capsys: pytest.CaptureFixture[str], args: list[str], *fragments: str) -> str:
    """Run prepare; expect exit code 2 and exactly one stderr line (no traceback) holding every fragment."""
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error:" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("vlmerge.prepare: error: "), lines
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def prepared(coco: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, bytes]]:
    out = coco.parent.parent / "arrow"
    assert main(argv(coco, out)) == 0
    capsys.readouterr()
    return out, snapshot(out)


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# --- a failed rerun leaves the previous dataset byte for byte -------------------------------------------------


def test_empty_image_folders_fail_with_the_counts_and_keep_the_previous_dataset(
    coco: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, before = prepared(coco, capsys)
    for folder in ("train2014", "val2014"):
        for path in images(coco / folder):
            path.unlink()
    # train is written first: 24 images read, all 24 missing.
    fails(capsys, argv(coco, out), "coco train: 0 rows", "24 images read, 24 skipped", "24 missing image file")
    assert snapshot(out) == before


def test_skip_rate_above_the_threshold_fails_and_keeps_the_previous_dataset(
    coco: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, before = prepared(coco, capsys)
    for path in images(coco / "val2014")[:3]:
        path.write_bytes(b"not an image")
    # 3 / 48 = 6.25% > 0.05 (the default); the rows would differ, so a rewrite would show.
    fails(capsys, argv(coco, out), "3 of 48 images skipped", "6.2%", "val 3/", "3 corrupt image", "max_skip_rate 0.05")
    assert snapshot(out) == before
    # Raising the threshold accepts the same input and lists what was skipped.
    assert main(argv(coco, out, "--max-skip-rate", "0.07")) == 0
    manifest = json.loads((out / manifest_name("coco")).read_text())
    assert manifest["skipped_by_reason"] == {"corrupt image": 3}
    assert sum(c["read"] for c in manifest["images"].values()) == 48
    assert snapshot(out) != before


def test_strict_failure_half_way_keeps_every_earlier_table(coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, before = prepared(coco, capsys)
    # A batch size that changes every table's bytes, and an unusable image as the last one of the last split
    # written (test): train, restval and val are complete in the staging folder when the error comes.
    record = json.loads((coco / "karpathy" / "dataset_coco.json").read_text())
    last = max(i["filename"] for i in record["images"] if i["split"] == "test")
    broken = coco / "val2014" / last
    broken.write_bytes(b"")
    fails(capsys, argv(coco, out, "--strict", "--batch-rows", "5"), "corrupt image", str(broken))
    assert snapshot(out) == before
    assert not list(out.glob(".staging-*"))


def test_disk_full_while_writing_is_one_line_and_keeps_the_previous_dataset(
    coco: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = prepared(coco, capsys)
    flush = TableWriter._flush
    calls = []

    def full_disk(self: TableWriter) -> None:
        calls.append(self.pattern.name)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.pattern))
        flush(self)

    monkeypatch.setattr(TableWriter, "_flush", full_disk)
    fails(capsys, argv(coco, out, "--batch-rows", "5"), "No space left on device", "previous outputs", str(out))
    assert snapshot(out) == before
    assert not list(out.glob(".staging-*"))


def test_a_bad_setting_is_one_line(coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, argv(coco, coco.parent / "out", "--max-skip-rate", "1.5"), "max_skip_rate")


# --- what a killed run leaves behind ------------------------------------------------------------------------


def test_the_next_run_removes_what_a_killed_run_left(coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = prepared(coco, capsys)
    stale_staging = out / ".staging-coco-999999"
    (stale_staging / "sub").mkdir(parents=True)
    (stale_staging / TRAIN).write_bytes(b"half a table")
    stale_temp = out / f".tmp-{TRAIN}.x1y2z3"
    stale_temp.write_bytes(b"half")
    others = [out / ".staging-f30k-999999", out / ".tmp-vqav2_train.arrow.abc"]  # another dataset's: kept
    others[0].mkdir()
    others[1].write_bytes(b"x")
    assert main(argv(coco, out)) == 0
    assert not stale_staging.exists() and not stale_temp.exists()
    assert all(p.exists() for p in others)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted(p.name for p in others)


def test_stale_shard_temporaries_and_shards_are_removed(raw_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "arrow"
    assert main(argv(raw_root / "sbu", out, "--shard-size", "5", dataset="sbu")) == 0  # 24 rows: 5 shards
    (out / ".tmp-sbu_7.arrow.abc").write_bytes(b"x")
    (out / "sbu_x.arrow").write_bytes(b"not a shard name: kept")
    assert main(argv(raw_root / "sbu", out, "--shard-size", "10", dataset="sbu")) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "sbu.manifest.json",
        "sbu_0.arrow",
        "sbu_1.arrow",
        "sbu_2.arrow",
        "sbu_x.arrow",
    ]


class _ReplaceFailsAfter:
    """``os`` for vlmerge.data.arrow.manifest whose ``replace`` fails like a kill after ``n`` renames."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0

    def replace(self, src: object, dst: object) -> None:
        if self.done == self.n:
            raise OSError(errno.EIO, "killed", str(dst))
        self.done += 1
        os.replace(src, dst)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


def test_a_commit_cut_short_is_caught_by_the_readers(
    coco: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = prepared(coco, capsys)
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "os", _ReplaceFailsAfter(2))  # restval, test renamed (sorted), then cut
        fails(capsys, argv(coco, out, "--batch-rows", "5"), "run prepare again", manifest_name("coco"))
    after = snapshot(out)
    assert after[manifest_name("coco")] == before[manifest_name("coco")]  # the old manifest: the commit point
    moved = sorted(name for name in before if after[name] != before[name])
    assert moved == ["coco_caption_karpathy_restval.arrow", "coco_caption_karpathy_test.arrow"]
    with pytest.raises(ReaderError, match=rf"{out / moved[0]}: sha256 .* listed in {out / manifest_name('coco')}"):
        ArrowTables([out / moved[0]], CAPTION, ("caption",))
    ArrowTables([out / TRAIN], CAPTION, ("caption",))  # untouched tables still match
    assert main(argv(coco, out, "--batch-rows", "5")) == 0  # the rerun repairs it
    ArrowTables([out / moved[0]], CAPTION, ("caption",))


# --- the commit's outcome against a naive reading -------------------------------------------------------------


def test_committed_manifest_matches_the_files_and_no_staging_remains(
    coco: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, files = prepared(coco, capsys)
    manifest = json.loads(files[manifest_name("coco")])
    assert set(files) == {manifest_name("coco"), *manifest["files"]}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest
    assert manifest["images"] == {
        s: {"read": n, "skipped": 0, "missing": 0} for s, n in {"train": 24, "restval": 8, "val": 8, "test": 8}.items()
    }
    assert manifest["provenance"]["config"]["out"] == str(out)


# --- the skip-rate and empty-split rules on hand-made counts --------------------------------------------------


def run_with(
    dataset: str, images: dict[str, tuple[int, int, int]], rows: dict[str, int], **options: object
) -> Conversion:
    run = Conversion(dataset, Path("/raw"), Path("/out"), ConvertOptions(**options))  # type: ignore[arg-type]
    run.images = {s: {"read": r, "skipped": k, "missing": m} for s, (r, k, m) in images.items()}
    run.splits = {s: {"rows": n} for s, n in rows.items()}
    return run


def test_skip_rate_rule() -> None:
    # 5 of 100 is exactly the default threshold: accepted; 6 is not.
    run_with("coco", {"train": (60, 2, 2), "val": (40, 3, 0)}, {"train": 58, "val": 37}).check()
    with pytest.raises(RawDataError, match=r"coco: 6 of 100 images skipped \(6\.0%; train 3/60, val 3/40\)"):
        run_with("coco", {"train": (60, 3, 3), "val": (40, 3, 0)}, {"train": 57, "val": 37}).check()
    run_with("coco", {"train": (60, 30, 30)}, {"train": 30}, max_skip_rate=1.0).check()
    # A crawl's missing files are dead links, counted neither as read nor as skipped: 2 corrupt of 50 left.
    run_with("gcc", {"train": (60, 12, 10)}, {"train": 48}).check()
    with pytest.raises(RawDataError, match=r"gcc: 3 of 50 images skipped"):
        run_with("gcc", {"train": (60, 13, 10)}, {"train": 47}).check()


def test_empty_split_rule() -> None:
    with pytest.raises(RawDataError, match=r"sbu train: 0 rows written \(24 images read, 24 skipped\) from /raw"):
        run_with("sbu", {"train": (24, 24, 24)}, {"train": 0}, max_skip_rate=1.0).check()
    with pytest.raises(RawDataError, match="vqa test-dev: 0 rows written"):
        run_with("vqa", {}, {"val": 3, "test-dev": 0}).check()
    # trainable_val is empty by design when rest_val takes every val image; not when val has more.
    run_with("vqa", {}, {"val": 3, "trainable_val": 0, "rest_val": 3}, rest_val_images=3).check()
    with pytest.raises(RawDataError, match="vqa trainable_val: 0 rows"):
        run_with("vqa", {}, {"val": 4, "trainable_val": 0, "rest_val": 3}, rest_val_images=3).check()


# --- integrity on read ----------------------------------------------------------------------------------------


def zero_inside_an_image(path: Path) -> None:
    """Zero 64 bytes in the middle of the first image's bytes; the Arrow footer stays intact."""
    with pa.OSFile(str(path)) as source:
        first = pa.ipc.open_file(source).read_all().column("image")[0].as_py()
    data = bytearray(path.read_bytes())
    at = data.index(first) + len(first) // 2
    data[at : at + 64] = bytes(64)
    path.write_bytes(bytes(data))


def pretrain_reader(path: Path) -> CaptionPairs:
    return CaptionPairs([path], eval_transform(32))


def finetune_reader(path: Path) -> object:
    return TASKS["coco"].train_dataset(path.parent, ["train"], eval_transform(32))


@pytest.mark.parametrize("reader", [pretrain_reader, finetune_reader], ids=["pretrain", "finetune"])
def test_zeroed_bytes_are_refused_naming_the_table_and_manifest(
    coco: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    reader: Callable[[Path], object],
) -> None:
    out, before = prepared(coco, capsys)
    table = out / TRAIN
    zero_inside_an_image(table)
    with pa.OSFile(str(table)) as source:  # pyarrow alone sees nothing wrong
        assert pa.ipc.open_file(source).read_all().num_rows == 24
    code = run_stage("finetune", lambda: reader(table))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"vlmerge.finetune: error: {table}: sha256 ")
    assert str(out / manifest_name("coco")) in err[0]
    # The switch skips the check: the damaged image bytes are read as they are.
    monkeypatch.setenv(SKIP_SHA256_ENV, "1")
    damaged = pretrain_reader(table).tables.column("image")[0].as_py()
    original = pa.ipc.open_file(pa.BufferReader(before[TRAIN])).read_all().column("image")[0].as_py()
    assert len(damaged) == len(original) and damaged != original


def test_truncated_table_names_the_file_with_and_without_the_check(
    coco: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = prepared(coco, capsys)
    table = out / TRAIN
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    with pytest.raises(ReaderError, match=rf"^{table}: sha256 "):
        pretrain_reader(table)
    monkeypatch.setenv(SKIP_SHA256_ENV, "1")
    with pytest.raises(ReaderError, match=rf"^{table}: "):
        pretrain_reader(table)


def test_damaged_structure_without_a_manifest_names_the_file(coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A table no manifest lists: every 64-byte window zeroed in turn gives either good data or a ReaderError."""
    out, _ = prepared(coco, capsys)
    folder = out.parent / "vilt"
    folder.mkdir()
    data = (out / FILES["coco"]["val"]).read_bytes()
    table, refused = folder / "t.arrow", 0
    for at in range(0, len(data), 256):
        damaged = bytearray(data)
        damaged[at : at + 64] = bytes(64)
        table.write_bytes(bytes(damaged))
        try:
            ArrowTables([table], CAPTION, ("image", "caption", "image_id")).column("caption").to_pylist()
        except ReaderError as err:
            assert str(err).startswith(f"{table}") or str(table) in str(err)
            refused += 1
    assert refused > 0


def test_verification_is_cached_per_file_version_and_not_repeated_in_workers(
    coco: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = prepared(coco, capsys)
    hashed: list[Path] = []

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    monkeypatch.setattr(table_module, "sha256_file", counting)
    monkeypatch.setattr(table_module, "_DIGESTS", {})
    paths = [out / FILES["coco"][s] for s in ("train", "val")]
    tables = ArrowTables(paths, CAPTION, ("caption",))
    ArrowTables(paths, CAPTION, ("image", "caption"))
    assert hashed == paths
    copy = pickle.loads(pickle.dumps(tables))  # a spawned DataLoader worker
    assert len(copy) == len(tables) and hashed == paths
    os.utime(paths[1], ns=(1, 1))  # a new file version is hashed again
    ArrowTables(paths, CAPTION, ("caption",))
    assert hashed == [*paths, paths[1]]
    ArrowTables(paths, CAPTION, ("caption",), verify=False)
    assert len(hashed) == 3


def test_a_table_no_manifest_lists_is_read_unchecked(coco: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = prepared(coco, capsys)
    folder = out.parent / "vilt"
    folder.mkdir()
    shutil.copy(out / TRAIN, folder / TRAIN)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger(table_module.__name__)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        assert len(ArrowTables([folder / TRAIN], CAPTION, ("caption",))) == 24
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (record,) = records
    assert record.levelno == logging.DEBUG and record.getMessage().startswith(
        f"{folder / TRAIN}: listed in no manifest"
    )


def test_a_bad_manifest_or_switch_value_is_named(
    coco: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = prepared(coco, capsys)
    manifest = out / manifest_name("coco")
    manifest.write_text("{not json")
    with pytest.raises(ReaderError, match=rf"^{manifest}: unreadable manifest"):
        ArrowTables([out / TRAIN], CAPTION, ("caption",))
    monkeypatch.setenv(SKIP_SHA256_ENV, "maybe")
    with pytest.raises(ConfigError, match=SKIP_SHA256_ENV):
        ArrowTables([out / TRAIN], CAPTION, ("caption",))
    assert issubclass(ReaderError, InputError)


# --- no mixing of experiments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("skip_sha256", [False, True], ids=["checked", "sha256-skipped"])
def test_a_table_of_another_experiment_is_refused_naming_both(
    coco: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, skip_sha256: bool
) -> None:
    from vlmerge.runtime.experiment import set_experiment

    out = coco.parent.parent / "arrow"
    try:
        assert main([*argv(coco, out), "--experiment", "embedded"]) == 0
        capsys.readouterr()
        manifest = out / manifest_name("coco")
        assert json.loads(manifest.read_text())["experiment"] == "embedded"
        if skip_sha256:
            monkeypatch.setenv(SKIP_SHA256_ENV, "1")
        set_experiment("embedded")
        assert len(pretrain_reader(out / TRAIN)) > 0  # its own experiment reads it
        set_experiment("paper")
        code = run_stage("pretrain", lambda: pretrain_reader(out / TRAIN))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert str(manifest) in err[0] and "'embedded'" in err[0] and "'paper'" in err[0], err[0]
        set_experiment(None)  # a run that names no experiment compares nothing
        assert len(pretrain_reader(out / TRAIN)) > 0
    finally:
        set_experiment(None)
