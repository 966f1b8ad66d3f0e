"""Process geometry of a training rule (``pretrain.launch``, ``finetune.launch`` in the config).

``launcher: srun`` makes the rule start ``srun --nodes N --ntasks-per-node T python -m ...`` itself, with
the geometry written out: the SLURM executor's job step strips ``SLURM_NTASKS`` and its relatives, and a
rule that launches several ranks must carry the resource ``mpi="srun"`` or the executor wraps it in its
own one-task ``srun`` (docs/slurm.md). ``local``: one process per rule.
"""

from __future__ import annotations

from typing import Any


class Launch:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.threads: int = spec["threads"]
        self.resources: dict[str, Any] = {"nodes": spec["nodes"], "tasks_per_node": spec["devices"]}
        if spec["launcher"] == "srun":
            self.resources["mpi"] = "srun"

    def launcher(self, wildcards: Any, resources: Any) -> str:
        """The command prefix: ``srun --nodes=N --ntasks-per-node=T`` (a profile may change N, T), or nothing."""
        if self.spec["launcher"] != "srun":
            return ""
        return f"srun --nodes={resources.nodes} --ntasks-per-node={resources.tasks_per_node}"
