"""ckptsurgery: graph-free surgery on TensorFlow checkpoints in bounded memory.

Data flows one way: sources (:mod:`.io`) -> plan (:mod:`.plan`, built from
:mod:`.plan.rules`) -> per-tensor transforms (:mod:`.transforms`, :mod:`.merge_methods`)
-> the executor (:mod:`.execute`) -> the shard writer and atomic publish (:mod:`.io`).
:mod:`.api` mirrors the CLI (:mod:`.cli`).
"""

import os as _os

# TensorFlow's C++ start-up chatter drowns our one-line errors; users can override.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .api import copy, diff, edit, inspect, run_recipe, transfer  # noqa: E402
from .plan.batch import MethodRule, Take, average, last_checkpoints, merge, plan_average, plan_merge  # noqa: E402
from .errors import (  # noqa: E402
    BadCheckpointError, CkptSurgeryError, NonFiniteError, OutputError, PlanError, RuleError, UsageError,
)
from .execute.executor import WriteOptions, WriteResult  # noqa: E402
from .report.verify import VerifyReport, verify  # noqa: E402
from .plan.entries import Plan, plan_edit  # noqa: E402
from .io.publish import clean  # noqa: E402
from .plan.rules import Cast, Drop, DropOptimizer, Keep, Rename, Resize  # noqa: E402
from .io.reader import Checkpoint, TensorInfo, open_checkpoint  # noqa: E402
from .plan.transfer import TransferReport, transfer_into_variables, variables_by_key  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "VerifyReport", "verify",
    "MethodRule", "Take", "average", "last_checkpoints", "merge", "plan_average", "plan_merge",
    "BadCheckpointError", "Cast", "Checkpoint", "CkptSurgeryError", "Drop", "DropOptimizer", "Keep",
    "NonFiniteError", "OutputError", "Plan", "PlanError", "Rename", "Resize", "RuleError", "TensorInfo",
    "TransferReport", "UsageError", "WriteOptions", "WriteResult", "clean", "copy", "diff", "edit", "inspect",
    "open_checkpoint", "plan_edit", "run_recipe", "transfer", "transfer_into_variables", "variables_by_key",
]
