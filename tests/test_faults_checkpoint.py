"""Faults around checkpoints and stage outputs: inputs are never overwritten, a checkpoint and its sidecar are
one unit, foreign inputs are refused, and every failure ends with one line and a non-zero exit code.

Each test is one probe as a user (or a killed job) would meet it: the stage's CLI with ``--out`` set to one of
its inputs, a write killed between the two renames, a truncated weights file whose sidecar matches, a file of
another experiment, a full disk, SIGTERM during pre-training, a tampered resume checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.builders import PRETRAIN_MODEL_ARG, SMALL, build_pretrain_data, pretrain_cli
from vlmerge.distance import cli as distance_cli
from vlmerge.errors import InputError
from vlmerge.evaluate import cli as evaluate_cli
from vlmerge.export import cli as export_cli
from vlmerge.files.grams import load_grams, save_grams
from vlmerge.finetune import cli as finetune_cli
from vlmerge.grams import cli as grams_cli
from vlmerge.merge import cli as merge_cli
from vlmerge.merging import GramStats
from vlmerge.model import CheckpointError, Heads, create_model
from vlmerge.model.checkpoint import CheckpointMeta, load_state, read_meta, save_checkpoint, save_model, sidecar_path
from vlmerge.runtime import atomic
from vlmerge.runtime.experiment import ExperimentMismatch, set_experiment
from vlmerge.runtime.outputs import OutputError, check_outputs, with_sidecar
from vlmerge.runtime.stage import run_stage
from vlmerge.train.errors import ResumeCheckpointError
from vlmerge.train.trainer import resume_checkpoint
from vlmerge.train.work_dir import check_resume_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_experiment():
    """Each test declares its own experiment (parsing ``--experiment`` declares it for the process)."""
    set_experiment(None)
    yield
    set_experiment(None)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(*paths: Path) -> dict[Path, str]:
    return {p: digest(p) for p in paths}


def model(sharing: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("tiny", sharing, Heads(), **SMALL)


@pytest.fixture
def ckpts(tmp_path: Path) -> dict[str, Path]:
    """An MS checkpoint, a seed (MA) checkpoint and a stand-in gram file, each with its sidecar."""
    ms, seed = tmp_path / "ms.safetensors", tmp_path / "seed.safetensors"
    save_model(ms, model("modality_specific"))
    save_model(seed, model("shared", 1))
    grams = tmp_path / "grams.safetensors"
    grams.write_bytes(b"gram statistics")
    sidecar_path(grams).write_text("{}")
    return {"ms": ms, "seed": seed, "grams": grams}


def error_of(main, argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    assert main(argv) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "no message"
    assert not any("Traceback" in line for line in lines)
    return lines[-1]


def merge_args(ckpts: dict[str, Path], out: Path, method: str = "arithmetic") -> list[str]:
    args = ["--method", method, "--ms", str(ckpts["ms"]), "--out", str(out)]
    if method == "arithmetic":
        args += ["--seed", str(ckpts["seed"])]
    return args


# ------------------------------------------------------------------------------ inputs are sacred
@pytest.mark.parametrize("which", ["ms", "seed", "ms sidecar", "seed sidecar"])
def test_merge_refuses_an_output_that_is_an_input_or_its_sidecar(ckpts, capsys, which: str) -> None:
    name, _, sidecar = which.partition(" ")
    target = sidecar_path(ckpts[name]) if sidecar else ckpts[name]
    # a sidecar as --out: "x.json" itself; an --out whose own sidecar is the input's: "x.pt" → "x.json"
    outs = [target] if not sidecar else [target, target.with_suffix(".pt")]
    before = snapshot(*ckpts.values(), *map(sidecar_path, ckpts.values()))
    for out in outs:
        message = error_of(merge_cli.main, merge_args(ckpts, out), capsys)
        assert str(ckpts[name].with_suffix("")) in message
    assert snapshot(*before) == before
    load_state(ckpts["ms"]), load_state(ckpts["seed"])  # still a consistent pair each


def test_merge_refuses_grams_as_output_and_a_hard_link_of_an_input(ckpts, tmp_path: Path, capsys) -> None:
    before = snapshot(ckpts["grams"], ckpts["ms"])
    args = ["--method", "regmean", "--ms", str(ckpts["ms"]), "--grams", str(ckpts["grams"])]
    message = error_of(merge_cli.main, [*args, "--out", str(ckpts["grams"])], capsys)
    assert "is the input --grams" in message
    link = tmp_path / "elsewhere" / "merged.safetensors"
    link.parent.mkdir()
    os.link(ckpts["ms"], link)  # the same inode under another name
    message = error_of(merge_cli.main, merge_args(ckpts, link), capsys)
    assert f"--out {link} is the input --ms {ckpts['ms']}" in message
    assert snapshot(*before) == before


def test_merge_cli_refuses_out_as_a_directory_or_a_sidecar_name(ckpts, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "merged"
    folder.mkdir()
    assert "is an existing directory" in error_of(merge_cli.main, merge_args(ckpts, folder), capsys)
    message = error_of(merge_cli.main, merge_args(ckpts, tmp_path / "merged.json"), capsys)
    assert "a .json name is the sidecar" in message and "merged.safetensors" in message
    assert not (tmp_path / "merged.json").exists()


def test_merge_subprocess_leaves_its_input_byte_identical(ckpts) -> None:
    before = snapshot(ckpts["ms"], sidecar_path(ckpts["ms"]))
    cmd = [sys.executable, "-m", "vlmerge.merge", *merge_args(ckpts, ckpts["ms"])]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "is the input --ms" in done.stderr
    assert snapshot(*before) == before


def test_other_stages_refuse_their_inputs_as_output(ckpts, tmp_path: Path, capsys) -> None:
    ms, seed = ckpts["ms"], ckpts["seed"]
    before = snapshot(ms, seed, sidecar_path(ms), sidecar_path(seed))
    dummy = tmp_path / "arrow"
    dummy.mkdir()
    # finetune --out = --init (the pre-trained model), and --out whose sidecar is the init's
    for out in (seed, seed.with_suffix(".pt")):
        argv = ["--task", "vqa", "--init", str(seed), "--arrow", str(dummy), "--tokenizer", str(dummy)]
        message = error_of(finetune_cli.main, [*argv, "--out", str(out), "--work-dir", str(tmp_path / "w")], capsys)
        assert "is the input --init" in message or "--init's sidecar" in message
    message = error_of(
        distance_cli.main, ["--ms", str(ms), "--seed", str(seed), "--out", str(sidecar_path(ms))], capsys
    )
    assert "is the input --ms's sidecar" in message
    message = error_of(export_cli.main, ["--ckpt", str(seed), "--out", str(seed)], capsys)
    assert "is the input --ckpt" in message
    argv = ["--ckpt", str(ms), "--task", "vqa", "--arrow", str(dummy), "--tokenizer", str(dummy)]
    assert "is the input --ckpt" in error_of(grams_cli.main, [*argv, "--out", str(ms)], capsys)
    argv = ["--task", "vqa", "--ckpt", str(ms), "--arrow", str(dummy), "--tokenizer", str(dummy)]
    assert "sidecar" in error_of(evaluate_cli.main, [*argv, "--out", str(sidecar_path(ms))], capsys)
    assert snapshot(*before) == before


def test_check_outputs_compares_resolved_paths(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    source = tmp_path / "in.safetensors"
    source.write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        check_outputs([("--out", tmp_path / "a" / ".." / "in.safetensors")], [("--in", source)])
    check_outputs([("--out", tmp_path / "out.safetensors")], [("--in", source), ("--none", None)])  # fine
    with pytest.raises(OutputError, match="sidecar"):
        with_sidecar("--out", tmp_path / "x.json")
    with pytest.raises(OutputError, match=f"{source} is a file, not a directory"):
        check_outputs([("--out", source / "sub" / "m.safetensors")], [])


# ------------------------------------------------------------------------- checkpoint + sidecar as one unit
def test_a_kill_between_the_renames_leaves_a_pair_that_load_refuses(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.safetensors"
    old = model("shared", 0)
    save_model(path, old)
    real_replace = os.replace
    calls: list[str] = []

    def replace_then_die(src, dst):
        calls.append(str(dst))
        if len(calls) == 2:  # the weights are in place; killed before the sidecar's rename
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, model("shared", 1))
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert calls == [str(path), str(sidecar_path(path))]
    with pytest.raises(CheckpointError, match="weights and sidecar are from different writes") as err:
        load_state(path)
    assert str(path) in str(err.value) and str(sidecar_path(path)) in str(err.value)
    assert not list(tmp_path.glob(".tmp-*"))  # the killed write's temporary sidecar is gone too


def test_a_kill_before_the_first_rename_keeps_the_old_pair(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.safetensors"
    old = model("shared", 0)
    save_model(path, old)
    before = snapshot(path, sidecar_path(path))

    def die(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, model("shared", 1))
    monkeypatch.undo()
    assert snapshot(*before) == before
    state, _ = load_state(path)
    assert all(torch.equal(state[k], v) for k, v in old.state_dict().items())


def test_stale_temporary_files_of_the_same_output_are_removed_by_the_next_run(ckpts, tmp_path: Path, capsys) -> None:
    out = tmp_path / "merged.safetensors"
    stale = [tmp_path / ".tmp-merged.safetensors.k1ll3d", tmp_path / ".tmp-merged.json.k1ll3d"]
    kept = [tmp_path / ".tmp-other.safetensors.abcdef", tmp_path / "merged.safetensors.bak"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    assert merge_cli.main(merge_args(ckpts, out)) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    load_state(out)


def test_checkpoint_loads_name_the_file_on_every_failure(ckpts, tmp_path: Path, capsys) -> None:
    ms = ckpts["ms"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ms.read_bytes()[:200])
    record = json.loads(sidecar_path(ms).read_text())
    record["weights_sha256"] = digest(truncated)  # a sidecar that matches the truncated bytes
    sidecar_path(truncated).write_text(json.dumps(record))
    message = error_of(
        merge_cli.main,
        ["--method", "interpolation", "--ms", str(truncated), "--out", str(tmp_path / "o.safetensors")],
        capsys,
    )
    assert message.startswith(f"vlmerge.merge: error: cannot read {truncated} as safetensors")
    not_safetensors = tmp_path / "text.safetensors"
    not_safetensors.write_text("hello")
    record["weights_sha256"] = digest(not_safetensors)
    sidecar_path(not_safetensors).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=f"cannot read {not_safetensors}"):
        load_state(not_safetensors)
    folder = tmp_path / "dir.safetensors"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=f"{folder} is a directory"):
        load_state(folder)
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(ms.read_bytes())
    with pytest.raises(CheckpointError, match=f"{lonely} has no sidecar"):
        load_state(lonely)
    with pytest.raises(CheckpointError, match="is a sidecar"):
        load_state(sidecar_path(ms))


# --------------------------------------------------------------------------------- no mixing of experiments
def test_an_input_of_another_experiment_is_refused_naming_both(ckpts, tmp_path: Path, capsys) -> None:
    set_experiment("embedded")
    seed = tmp_path / "embedded-seed.safetensors"
    save_model(seed, model("shared", 2))
    assert json.loads(sidecar_path(seed).read_text())["experiment"] == "embedded"
    set_experiment(None)
    args = ["--method", "arithmetic", "--ms", str(ckpts["ms"]), "--seed", str(seed)]
    message = error_of(
        merge_cli.main, [*args, "--out", str(tmp_path / "m.safetensors"), "--experiment", "paper"], capsys
    )
    assert f"{seed} was made under experiment 'embedded' (preset tiny), this run is 'paper'" in message
    # the same experiment, and inputs without a record (ckpts were written with none), are accepted
    out = tmp_path / "ok.safetensors"
    assert merge_cli.main([*args, "--out", str(out), "--experiment", "embedded"]) == 0
    assert read_meta(out) and json.loads(sidecar_path(out).read_text())["experiment"] == "embedded"
    # an imported release is every experiment's input
    record = json.loads(sidecar_path(seed).read_text()) | {"experiment": "released"}
    sidecar_path(seed).write_text(json.dumps(record))
    assert merge_cli.main([*args, "--out", str(tmp_path / "r.safetensors"), "--experiment", "paper"]) == 0


def test_a_merge_of_an_ms_and_a_seed_of_different_presets_is_refused(ckpts, tmp_path: Path, capsys) -> None:
    # "small" is not a preset name of its own: give the seed's sidecar another preset's record
    record = json.loads(sidecar_path(ckpts["seed"]).read_text())
    base = create_model("tiny", "shared", Heads(), **SMALL)
    assert record["preset"] == base.config.preset == "tiny"
    state, meta = load_state(ckpts["seed"])
    other = CheckpointMeta("base", meta.overrides | _base_to_small(), meta.sharing, meta.heads)
    path = tmp_path / "base-seed.safetensors"
    save_checkpoint(path, state, other)
    args = ["--method", "arithmetic", "--ms", str(ckpts["ms"]), "--seed", str(path)]
    message = error_of(merge_cli.main, [*args, "--out", str(tmp_path / "m.safetensors")], capsys)
    assert f"--seed {path} is preset base, --ms {ckpts['ms']} is preset tiny" in message


def _base_to_small() -> dict[str, object]:
    """Overrides that make the ``base`` preset the same sizes as the tests' small tiny model."""
    tiny = create_model("tiny", "shared", Heads(), **SMALL).config
    return {k: getattr(tiny, k) for k in ("vocab_size", "init_std", "layer_scale", *SMALL)}


# ------------------------------------------------------------------------------------------ exit codes
def test_a_full_disk_is_one_line_naming_the_file_and_nothing_partial(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, model("shared", 0))
    before = snapshot(path, sidecar_path(path))

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr("vlmerge.model.checkpoint.save_file", full)
    assert run_stage("merge", lambda: save_model(path, model("shared", 1))) == 2
    assert capsys.readouterr().err.strip() == f"vlmerge.merge: error: {path}: No space left on device"
    assert snapshot(*before) == before and not list(tmp_path.glob(".tmp-*"))
    code = run_stage("merge", lambda: (_ for _ in ()).throw(OSError(errno.EISDIR, "Is a directory", "out")))
    assert code == 2 and capsys.readouterr().err.strip() == "vlmerge.merge: error: out: Is a directory"


def test_a_tampered_or_corrupt_resume_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    last = work / "checkpoints" / "last.ckpt"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "x": Boom()}, last)
    with pytest.raises(ResumeCheckpointError, match=f"refusing to resume from {last}"):
        check_resume_checkpoint(resume_checkpoint(work))
    last.write_bytes(pickle.dumps({"a": 1})[:5])
    assert run_stage("pretrain", lambda: check_resume_checkpoint(resume_checkpoint(work))) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"vlmerge.pretrain: error: cannot read the resume checkpoint {last}")
    assert issubclass(ResumeCheckpointError, InputError)


def test_a_bare_system_exit_from_training_is_incomplete_not_success(capsys) -> None:
    class Stop(SystemExit):  # how Lightning ends fit() on SIGTERM
        pass

    def body() -> None:
        raise Stop()

    assert run_stage("pretrain", body) == 1
    assert "terminated by a signal" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an explicit exit keeps its meaning
        run_stage("pretrain", lambda: sys.exit(3))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_during_pretraining_saves_a_checkpoint_and_exits_1(tmp_path: Path, signum: int) -> None:
    arrow, tokenizer = build_pretrain_data(tmp_path / "data")
    work, out = tmp_path / "work", tmp_path / "seed.safetensors"
    args: list[str | Path] = [
        "--arrow", arrow, "--tokenizer", tokenizer, "--model", PRETRAIN_MODEL_ARG, "--image-size", "32",
        "--batch-size", "4", "--val-every", "0", "--num-workers", "0", "--steps", "100000", "--ckpt-every", "2",
        "--out", out, "--work-dir", work,
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(pretrain_cli(*args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last, deadline = work / "checkpoints" / "last.ckpt", time.monotonic() + 60
    while not last.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert last.exists(), "no checkpoint in 60 s" if run.poll() is None else run.communicate()[1].decode()
    run.send_signal(signum)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 1, err.decode()[-2000:]
    last_line = err.decode().strip().splitlines()[-1]
    assert "terminated by a signal" in last_line or "rerun to resume" in last_line, last_line
    saved = list(work.glob("hpc_ckpt_*.ckpt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=True)["global_step"] >= 2
    assert not out.exists() and not sidecar_path(out).exists()
    assert resume_checkpoint(work) in (saved[0], last)


def test_gram_files_record_their_experiment_and_refuse_another(tmp_path: Path) -> None:
    x = torch.randn(5, 3, dtype=torch.float64)
    stats = GramStats({"m": x.T @ x}, {"m": x.sum(0)}, {"m": 5})
    path = tmp_path / "grams.safetensors"
    set_experiment("embedded")
    save_grams(path, stats, {"task": "vqa"})
    record = json.loads(sidecar_path(path).read_text())
    assert record["experiment"] == "embedded" and record["weights_sha256"] == digest(path)
    loaded, _ = load_grams(path)
    torch.testing.assert_close(loaded.xtx["m"], x.T @ x, rtol=0, atol=0)
    set_experiment("paper")
    with pytest.raises(ExperimentMismatch, match=f"{path} was made under experiment 'embedded', this run is 'paper'"):
        load_grams(path)
