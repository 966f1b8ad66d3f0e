"""Faults at the workflow level: config values are data, never shell code, and paths with spaces work.

A config value reaches a stage through a rule's shell command. Every value the rules pass is quoted
(``shlex.quote`` or Snakemake's ``:q``) and every merge parameter is typed, so a value holding shell
syntax either is refused when the DAG is built or reaches the stage as the literal text it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.builders import snakemake, write_config
from vlmerge.data.synth import generate

HOSTILE = "$(touch PWNED-subst) `touch PWNED-tick`; touch PWNED-semi"


def pwned(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("PWNED*")]


@pytest.mark.parametrize(
    ("entry", "spec"),
    [
        ("interpolation", {"method": "interpolation", "params": {"ratio": f"0.5{HOSTILE}"}}),
        ("arithmetic", {"method": "arithmetic", "params": {"lam": 0.5, "mode": f"upstream_sequential{HOSTILE}"}}),
        ("regmean", {"method": "regmean", "params": {"alpha": 0.9, "normalize": HOSTILE}}),
    ],
    ids=["number", "mode", "normalize"],
)
def test_a_merge_parameter_holding_shell_code_is_refused_when_the_dag_is_built(
    tmp_path: Path, entry: str, spec: dict
) -> None:
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["merge"]["methods"][entry] = spec
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, tmp_path / "config.yaml", "-n", "-p", f"results/vqa/{entry}.json")
    assert out.returncode != 0
    assert f"config.merge.methods.{entry}" in out.stdout + out.stderr
    assert not pwned(tmp_path, Path.cwd())


@pytest.mark.slow
def test_paths_with_spaces_and_shell_syntax_reach_the_stages_as_text(tmp_path: Path) -> None:
    """A raw root and a data folder whose names hold spaces, quotes and command substitutions: the prepare
    and vocab jobs run, write where the config says, and no command inside the names runs."""
    raw = tmp_path / f"raw root {HOSTILE}"
    generate(raw, seed=0, size="tiny", datasets=["coco"])
    data_dir = f"my data 'quoted' {HOSTILE}"
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["data"].update({"dir": data_dir, "datasets": ["coco"]})
    config["data"]["raw"]["coco"] = str(raw / "coco")
    config["pretrain"]["datasets"] = ["coco"]
    config["finetune"]["tasks"] = ["coco"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, tmp_path / "config.yaml", f"{data_dir}/arrow/tokenizer", "-c1")
    assert out.returncode == 0, out.stderr[-3000:]
    arrow = tmp_path / data_dir / "arrow"
    manifest = json.loads((arrow / "coco.manifest.json").read_text())
    assert manifest["files"] and all((arrow / name).is_file() for name in manifest["files"])
    assert (arrow / "tokenizer" / "vocab.txt").is_file()
    assert not pwned(tmp_path, Path.cwd())
