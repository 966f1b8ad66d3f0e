"""Arguments, inputs and resources of the pre-training rule, derived from the validated config.

Run names: ``seed`` (MA seed run), ``ma`` (MA baseline), ``ms_<sharing>`` (modality-specific or an
ablation layout, initialised from the seed checkpoint through ``expand_experts``); the seed-length
ablation adds ``seed<steps>`` and ``ms_<sharing>@seed<steps>`` initialised from it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from workflow.launch import Launch
from workflow.paths import Paths, stage_code

MS_SHARINGS = ("modality_specific", "attn", "ffn", "ln")


class Pretraining:
    run_pattern = "seed([0-9]+)?|ma|ms_(" + "|".join(MS_SHARINGS) + ")(@seed[0-9]+)?"

    def __init__(self, config: dict[str, Any], paths: Paths) -> None:
        self.cfg, self.model, self.paths = config["pretrain"], config["model"], paths
        self.datasets = config["data"]["datasets"]
        self.launch = Launch(self.cfg["launch"])

    def inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "manifests": [self.paths.manifest(d) for d in ("coco", "vg", "sbu", "gcc") if d in self.cfg["datasets"]],
            "tokenizer": self.paths.tokenizer_dir,
            "code": stage_code("pretrain"),
        }
        if wildcards.run.startswith("ms_"):
            inputs["seed"] = self.paths.checkpoint(seed_of(wildcards.run))
        elif self.cfg["init"].startswith("beit:"):
            inputs["beit"] = self.cfg["init"].removeprefix("beit:")
        return inputs

    def run_spec(self, run: str) -> dict[str, int]:
        """Steps and warm-up of an MA run; ``seed<N>`` keeps the seed run's warm-up fraction."""
        steps = re.fullmatch(r"seed([0-9]+)", run)
        if steps is None:
            return self.cfg["runs"][run]
        seed = self.cfg["runs"]["seed"]
        n = int(steps[1])
        return {"steps": n, "warmup": round(seed["warmup"] * n / seed["steps"])}

    def work_dir(self, wildcards: Any, resources: Any) -> str:
        """Resumable state of this exact run: a changed argument starts a fresh directory.

        (The stage refuses a work directory left by a run with other settings.)
        """
        geometry = f"--devices {resources.tasks_per_node} --nodes {resources.nodes}"
        digest = hashlib.sha256(f"{self.args(wildcards)} {geometry}".encode()).hexdigest()[:12]
        return self.paths.work(f"pretrain/{wildcards.run}-{digest}")

    def args(self, wildcards: Any) -> str:
        """Everything but the process geometry (the rule adds it from its resources, which a profile may set).

        Only ``wildcards``: Snakemake records such params for its params trigger, while a function asking
        for ``input`` or ``resources`` is "derived" and never compared, hiding every hyper-parameter.
        """
        run = wildcards.run
        if run.startswith("ms_"):
            sharing = run.removeprefix("ms_").partition("@")[0]
            spec, init = self.cfg["runs"]["ms"], f"seed:{self.paths.checkpoint(seed_of(run))}"
        else:
            spec, sharing, init = self.run_spec(run), "shared", self.cfg["init"]
        cfg = self.cfg
        overrides = ",".join(f"{k}={v}" for k, v in sorted(self.model["overrides"].items()))
        args = [
            f"--arrow {self.paths.arrow_dir}", f"--tokenizer {self.paths.tokenizer_dir}",
            f"--preset {self.model['preset']}", f"--sharing {sharing}", f"--init {init}",
            f"--steps {spec['steps']}", f"--warmup {spec['warmup']}",
            f"--datasets {','.join(cfg['datasets'])}", f"--image-size {cfg['image_size']}",
            f"--batch-size {cfg['batch_size']}", f"--global-batch {cfg['global_batch']}",
            f"--lr {cfg['lr']}", f"--weight-decay {cfg['weight_decay']}", f"--mlm-prob {cfg['mlm_prob']}",
            "--augment" if cfg["augment"] else "--no-augment",
            f"--seed {cfg['seed']}", f"--precision {cfg['precision']}", f"--strategy {cfg['strategy']}",
            f"--num-workers {cfg['num_workers']}", f"--ckpt-every {cfg['ckpt_every']}",
            f"--val-every {cfg['val_every']}",
        ]
        if overrides:
            args.append(f"--model {overrides}")
        return " ".join(args)


def seed_of(ms_run: str) -> str:
    """The seed run an MS run starts from: ``ms_attn`` → ``seed``, ``ms_ffn@seed50`` → ``seed50``."""
    return ms_run.partition("@")[2] or "seed"
