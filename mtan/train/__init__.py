"""Training: one config object, one ``train(config)`` that runs a whole experiment.

==================  ====================================================================
module              job
==================  ====================================================================
``config``          :class:`TrainConfig` (each field's default, check and flag, declared once), the presets
``cli``             ``train.py``: the flags made from the config's fields, resume, exit codes
``datasets``        the run's training split and validation sets, held in memory
``schedule``        the learning-rate schedule
``weighting``       how the task losses (or the tasks' gradients) are combined, with each method's state
``gradients``       the gradient methods as functions of the per-task gradients (PCGrad, MGDA, ...)
``engine``          :class:`Engine`: the model, optimiser and data of one run, and its loop
``epoch_losses``    an epoch's task losses summed on the device as the loop goes
``run_folder``      the run folder's checks, ``metrics.jsonl``, the best epoch, the exported model
``plots``           ``curves.png``
==================  ====================================================================

Checkpoints are :mod:`mtan.checkpoint`; scoring a model on a dataset is :mod:`mtan.scoring`; the
device and the processes of a distributed run are :mod:`mtan.runtime`.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import torch.distributed as dist

from mtan.train.config import PRESETS, TrainConfig, apply_preset
from mtan.train.engine import Engine, NonFiniteLossError
from mtan.train.run_folder import check_run_folder, command_line

__all__ = ["PRESETS", "Engine", "NonFiniteLossError", "TrainConfig", "apply_preset", "command_line", "train"]


def train(config: TrainConfig, resume: bool = False, log=print) -> list[dict]:
    """Run (or resume) a training run; returns the per-epoch records."""
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_folder(Path(config.engine.out), resume)
    engine = Engine(config, log=log)
    if resume:
        engine.resume()
    out, is_main, distributed = engine.out, engine.runtime.is_main, engine.runtime.distributed
    try:
        history = engine.fit()
    finally:
        if distributed and dist.is_initialized():
            # The DDP wrapper and any pending collective hold the process group: free them while the
            # interpreter is fully alive, then close the group (gloo's worker threads otherwise can
            # be torn down at exit and abort the process after a finished run).
            del engine
            gc.collect()
            dist.destroy_process_group()
    if config.hub.repo and is_main:
        from mtan.hub import push_run  # the Hub client is loaded only for a run that pushes

        push_run(out, config.hub.repo, private=config.hub.private, log=log)
    return history
