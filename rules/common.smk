# Paths and target functions shared by all rule files. Logic lives in workflow/paths.py.
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from workflow.paths import Paths, parent_of_output, stage_code

paths = Paths(config)
ENV = "../workflow/envs/vlmerge.yaml"


def data_targets():
    """Everything the data stage produces for the configured datasets."""
    return [paths.manifest(d) for d in config["data"]["datasets"]] + [paths.tokenizer_dir]
