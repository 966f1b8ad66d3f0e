"""Stage ``import``: read a vl-merging Lightning checkpoint into a vlmerge one.

    python -m vlmerge.import --ckpt PATH.ckpt --out OUT.safetensors [--preset base|large|tiny]
        [--vqa-answers ANSWERS.json]

Detects from the keys whether the file is MA (merged models are MA-shaped too) or MS, and which heads
it carries; takes the sizes from its shapes and checks them against the preset. Writes safetensors and
a sidecar recording the source's sha256 and what was detected. A VQA head's rows follow ViLT's label
ids: the sidecar says so, and ``--vqa-answers`` (a JSON list of the answer strings in that order) is
copied beside the output, named in the sidecar, so evaluation can map rows to answers. The file is
unpickled with ``weights_only``; anything that could run code is refused. Bad input ends with a
one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.errors import InputError
from vlmerge.runtime import atomic_write_json, provenance
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage

from .config import ImportSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportConfig:
    ckpt: Path
    out: Path
    vqa_answers: Path | None
    settings: ImportSettings

    def resolved(self) -> dict[str, Any]:
        paths = {
            "ckpt": str(self.ckpt),
            "out": str(self.out),
            "vqa_answers": self.vqa_answers and str(self.vqa_answers),
        }
        return paths | self.settings.model_dump()


def parse_args(argv: list[str] | None) -> ImportConfig:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.import", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="the vl-merging Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint (.safetensors; sidecar .json)")
    parser.add_argument(
        "--vqa-answers", type=Path, help="JSON list of the VQA answers in ViLT's label order (one per head row)"
    )
    add_settings_arguments(parser, ImportSettings)
    args = parser.parse_args(argv)
    return ImportConfig(args.ckpt, args.out, args.vqa_answers, settings_from_args(args, ImportSettings))


def answers_path(out: Path) -> Path:
    """Where the VQA answer list of checkpoint ``out`` is kept: beside it, ``x.vqa_answers.json``."""
    return out.with_suffix(".vqa_answers.json")


def read_answers(path: Path, rows: int) -> list[str]:
    """The answer strings of ``path``, one per VQA head row."""
    try:
        answers = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the VQA answers {path}: {err}") from err
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{path}: expected a JSON list of answer strings")
    if len(answers) != rows:
        raise InputError(f"{path} lists {len(answers)} answers, the checkpoint's VQA head has {rows} rows")
    return answers


def run(config: ImportConfig) -> None:
    # torch and the model come with the run alone: ``--help`` stays light.
    from vlmerge.model.checkpoint import save_model
    from vlmerge.model.import_vlmerging import read_vlmerging

    outputs = [*with_sidecar("--out", config.out), ("--out's VQA answers", answers_path(config.out))]
    check_outputs(outputs, [("--ckpt", config.ckpt), ("--vqa-answers", config.vqa_answers)])
    settings = config.settings
    model, found = read_vlmerging(config.ckpt, settings.preset, **settings.overrides)
    rows = found.heads.vqa_answers
    if config.vqa_answers is not None and not rows:
        raise InputError(f"--vqa-answers given, but {config.ckpt} has no VQA head")
    inputs = {"source": config.ckpt}
    extra: dict[str, Any] = {"imported_from": "vl-merging", "detected": found.to_json()}
    if rows:
        extra["vqa"] = {"label_order": "vilt", "answers_file": None}
    if config.vqa_answers is not None:
        answers = read_answers(config.vqa_answers, rows)
        atomic_write_json(answers_path(config.out), answers)
        extra["vqa"]["answers_file"] = answers_path(config.out).name
        inputs["vqa_answers"] = config.vqa_answers
    extra["provenance"] = provenance("import", config.resolved())
    save_model(config.out, model, inputs=inputs, extra=extra, experiment="released")
    log.info("imported %s (%s) into %s", config.ckpt, found.architecture, config.out)


def main(argv: list[str] | None = None) -> int:
    return run_stage("import", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
