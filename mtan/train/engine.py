"""The training engine: :class:`Engine` holds one run's model, optimiser, data and settings, and
``fit()`` trains it.

Per epoch: train on the (optionally augmented) training split, evaluate on every validation
set, log one line to ``metrics.jsonl``, redraw ``curves.png``, export the model (``config.json``
+ ``model.safetensors`` + model card) with ``save_pretrained`` and, last, write an atomic checkpoint.

Faults: a NaN or infinite training loss stops the run (``NonFiniteLossError``, naming the task)
before anything of that epoch is saved; a failed write (a full disk) stops it with a
``CheckpointError`` saying what is intact and how to continue; ``--resume`` skips damaged
checkpoints (with a warning naming them) and removes temporary files left by a killed writer.

Fast by default where it helps: data held in memory on the training device (uint8 images,
compact targets), augmentation on whole batches on that device, bf16 autocast (on a CPU where it
is measured faster), channels-last and fused Adam on CUDA, optional ``torch.compile``; losses and
metrics are accumulated on the device and read once per epoch (plus a throttled read for the
progress bar).

Multi-GPU / multi-node: run the same script under ``torchrun``; each process trains on its
shard of every epoch's permutation with DistributedDataParallel, metrics are summed across
processes, and only rank 0 writes files and logs.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from mtan.atomic import atomic_write_text
from mtan.checkpoint import (CheckpointError, clean_stale_temporaries, latest_good_checkpoint, list_checkpoints,
                             prune_checkpoints, restore, save_checkpoint)
from mtan.data import validate
from mtan.data.augment import BatchAugment, paste_class_ids
from mtan.data.common import parse_size
from mtan.data.photometric import photometric
from mtan.data.registry import spec
from mtan.model import MTAN, ModelConfigError, WidenError, count_parameters, load_into
from mtan.runtime import setup_runtime, shard_order
from mtan.metrics import with_delta_m
from mtan.scoring import evaluate_model
from mtan.tasks import Task, tasks_from_config
from mtan.timing import cpu_identity
from mtan.train import cpu_speed
from mtan.train.config import TrainConfig
from mtan.train.datasets import build_split, load_into_memory, validation_sets
from mtan.train.epoch_losses import EpochLosses
from mtan.train.plots import plot_curves
from mtan.train.run_folder import baseline_scores, export, monitor_score, read_metrics, summary_line
from mtan.train.schedule import build_schedule
from mtan.train.weighting import Parts, build_weighting, model_parts


PROGRESS_EVERY_S = 60.0  # without a progress bar (output to a log file): a progress line this often


class Engine:
    """Holds the model, optimiser, data and settings of one run; ``fit()`` trains it."""

    def __init__(self, config: TrainConfig, log=print):
        self.config = config
        self.runtime = setup_runtime(config.engine.device)
        self.log = log if self.runtime.is_main else (lambda *a, **k: None)
        self.out = Path(config.engine.out)
        # progress bars on an interactive terminal only (logs and CI get the per-epoch lines)
        self.show_progress = config.engine.progress and self.runtime.is_main and sys.stderr.isatty()
        torch.manual_seed(config.engine.seed)
        device = self.runtime.device
        cuda = device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if (config.engine.amp == "bf16" or (config.engine.amp == "auto" and cuda)) else None
        self.channels_last = config.engine.channels_last == "on" or (config.engine.channels_last == "auto" and cuda)

        self._load_data()  # validated before the first step, held in memory on the device
        self._build_model()
        self.tasks = self.model.tasks
        self.baselines = baseline_scores(config.engine.baseline) if config.engine.baseline else {}
        self.weighting = build_weighting(config.optim.weighting, self.model.task_names, config.optim.temperature,
                                         seed=config.engine.seed, solve_every=config.optim.solve_every).to(device)
        if self.weighting.on_representation and config.engine.compile:
            raise ValueError(f"--weighting {config.optim.weighting} reads the shared features between the network's parts "
                             f"and runs eagerly: leave out --compile")
        # gradient methods average each task's gradient over the processes themselves (no DDP wrapper)
        self.sync_by_hand = self.weighting.uses_gradients and self.runtime.distributed
        self.parts = self._parts()
        self.class_weights = self._class_weights()
        # each task's own loss options, from its own part of the config, read by the task itself
        self.loss_options = {t.name: t.loss_options(config.loss.of(t.name), self.class_weights.get(t.name))
                             for t in self.tasks}
        self.label_sources = self._label_sources()
        self.paste_ids = paste_class_ids(self.data_tasks, config.data.paste_names(), config.data.name)
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        optimizer = torch.optim.AdamW if config.optim.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay,
                                   **({"fused": True} if cuda else {}))
        if config.optim.accumulate > 1 and not self.weighting.can_accumulate:
            raise ValueError(f"--weighting {config.optim.weighting} finds a step's weights from every batch's graph at once, "
                             f"so it does not accumulate gradients: leave out --accumulate (or use --batch-size)")
        self.steps_per_epoch = max(1, len(self.train_data) // self.runtime.world // config.optim.batch_size
                                   // config.optim.accumulate)
        self.scheduler = build_schedule(self.optimizer, config, self.steps_per_epoch)
        self.step_schedule_per_batch = config.optim.schedule != "step"

        if "auto" in (config.engine.amp, config.engine.channels_last) and not cuda:
            self._choose_cpu_speed()
        # the module that runs the steps: compiled and/or wrapped for DDP
        self.forward_module = self._wrap(config.engine.compile)
        self.compile_unproven = config.engine.compile  # torch.compile fails at the first call, not when wrapping
        self.start_epoch = 0
        self.best_score = -math.inf
        self.history: list[dict] = []

    def _load_data(self) -> None:
        """The training split and the validation sets: rendered where generated, every item
        checked, then held in memory on the device; the tasks the data has."""
        config, device = self.config, self.runtime.device
        cuda = device.type == "cuda"
        self.log(f"preparing {config.data.name}: reading (or rendering) and checking the data, then building the model"
                 + (" and timing float32 against bf16 on this CPU" if config.engine.amp == "auto" and not cuda else "")
                 + " ...")
        train_set = build_split(config, "train")
        self.val_raw = validation_sets(config)
        if config.data.workers:  # generated frames: render them in parallel before the checks read them
            for ds in [train_set, *self.val_raw.values()]:
                for part in getattr(ds, "datasets", [ds]):
                    if hasattr(part, "render_all"):
                        part.render_all(config.data.workers, progress=self.show_progress)
        for ds in [train_set, *self.val_raw.values()]:
            validate(ds, full=True, progress=self.show_progress)
        self.train_data = load_into_memory(train_set, device, self.show_progress, config.data.workers)
        self.val_data = {k: load_into_memory(v, device, False, config.data.workers) for k, v in self.val_raw.items()}
        self.data_tasks: list[Task] = tasks_from_config(train_set.task_configs)

    def _build_model(self) -> None:
        """The network for the data's tasks (one task's alone for ``--arch single``), started from
        ``--init-from`` if given, in the memory layout and attention form chosen for the device."""
        config, device = self.config, self.runtime.device
        cuda = device.type == "cuda"
        task_cfgs = [t.to_config() for t in self.data_tasks]
        if config.model.arch == "single":
            if config.model.task is None:
                raise ValueError(f"arch 'single' needs --task (one of {[t.name for t in self.data_tasks]})")
            task_cfgs = [t for t in task_cfgs if t["name"] == config.model.task]
            if not task_cfgs:
                raise ValueError(f"--task {config.model.task!r} is not a task of {config.data.name} "
                                 f"({[t.name for t in self.data_tasks]})")
        self.model = MTAN(task_cfgs, arch=config.model.arch, width=config.model.width).to(device)
        if config.model.init_from:
            self._init_from(config.model.init_from)
        # same math either way (tested); fewer, larger kernels pay off on a GPU
        self.model.set_batched_attention(config.engine.batched_attention == "on" or (config.engine.batched_attention == "auto" and cuda))
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _choose_cpu_speed(self) -> None:
        """``--amp auto`` / ``--channels-last auto`` on a CPU (:mod:`mtan.train.cpu_speed`): the
        timing steps run on a real batch and leave no trace (weights, BatchNorm statistics, the
        weighting's state and the random draws are restored), so a resume stays exact."""
        engine = self.config.engine
        record = cpu_speed.recorded(self.out / "checkpoints")
        saved = None

        def step(speed: cpu_speed.Speed) -> None:
            nonlocal saved
            if saved is None:
                saved = ({k: v.clone() for k, v in self.model.state_dict().items()}, torch.get_rng_state(),
                         copy.deepcopy(self.weighting.state_dict()),
                         next(self._batches(self.train_data, self.config.optim.batch_size, 0, self.config.data.augment)))
            self._set_speed(speed)
            self._forward_backward(self.model, self._prepare(dict(saved[3])))

        self._set_speed(cpu_speed.choose(engine.amp, engine.channels_last, record, step, self.log))
        if saved is not None:
            self.model.load_state_dict(saved[0])
            torch.set_rng_state(saved[1])
            self.weighting.load_state_dict(saved[2])
            self.optimizer.zero_grad(set_to_none=True)

    def _set_speed(self, speed: cpu_speed.Speed) -> None:
        self.amp_dtype = torch.bfloat16 if speed.amp == "bf16" else None
        self.channels_last = speed.layout == "on"
        self.model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _init_from(self, source: str) -> None:
        """Copy the weights of a saved model with the same architecture and tasks: of the same
        width, or of a narrower one grown to this width with its outputs kept (``mtan.model.widen``)."""
        try:
            other = MTAN.from_pretrained(source)
            grown = load_into(self.model, other, seed=self.config.engine.seed)
        except (ModelConfigError, WidenError) as e:
            raise ValueError(f"--init-from {source}: {e}") from None
        calibrated = [t.name for t in other.tasks if getattr(t, "class_bias", None) is not None]
        self.log(f"initialised from {source}"
                 + (f", grown from width {other.width:g} to {self.model.width:g} (each channel copied; same outputs)"
                    if grown else "")
                 + (f" (its calibration of {', '.join(calibrated)} is not carried over: python -m mtan.calibrate "
                    f"fits one for the trained model)" if calibrated else ""))

    def _class_weights(self) -> dict[str, torch.Tensor]:
        """Per-class weights of the training losses that ask for them (``--class-weights``), from
        the training labels."""
        out = {}
        for t in self.tasks:
            options = self.config.loss.of(t.name)
            if options is None or t.name not in self.train_data.targets:
                continue
            weights = t.class_weights(self.train_data.targets[t.name], options)
            if weights is not None:
                out[t.name] = weights
                self.log(t.describe_class_weights(weights, options))
        return out

    def _label_sources(self) -> dict[str, Task]:
        """For each task whose loss reads another's labels (``--depth-occlusion``, ``--depth-sky``): the
        segmentation task whose class set says what stands in front of what."""
        sources = {}
        for t in self.tasks:
            options = self.loss_options[t.name]
            flags = [f"--depth-{k}" for k in ("occlusion", "sky") if options.get(k)]
            if flags:
                seg = next((s for s in self.data_tasks if getattr(s, "class_set", None) is not None
                            and s.class_set.occlusion is not None), None)
                if seg is None:
                    raise ValueError(f"{' and '.join(flags)} need{'s' if len(flags) == 1 else ''} street segmentation "
                                     f"labels (the CityScapes 7 or 19 classes) beside {t.name!r}; "
                                     f"{self.config.data.name} has none: leave it out")
                sources[t.name] = seg
        return sources

    def _parts(self) -> Parts:
        return model_parts(self.model, cut=self.weighting.on_representation, average=self._average)

    def _average(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors over the processes of a distributed run, in place."""
        if self.runtime.distributed:
            for t in tensors:
                dist.all_reduce(t)
                t /= self.runtime.world

    def _wrap(self, compile: bool):
        module = compile_or_eager(self.model, self.log) if compile else self.model
        if self.sync_by_hand:  # as DDP does when it wraps: every process starts from rank 0's weights
            for t in [*self.model.parameters(), *self.model.buffers()]:
                dist.broadcast(t.data, 0)
        if self.runtime.distributed and not self.sync_by_hand:
            from torch.nn.parallel import DistributedDataParallel as DDP

            cuda = self.runtime.device.type == "cuda"
            module = DDP(module, device_ids=[self.runtime.device.index] if cuda else None)
        return module

    # ---- one pass ---------------------------------------------------------------------

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.runtime.device.type, enabled=False)
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype)

    def _prepare(self, batch: dict) -> dict:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        batch["image"] = batch["image"].contiguous(memory_format=layout)
        return batch

    def _batches(self, data, batch_size: int, epoch: int | None, augment: bool):
        """Batches of ``data`` for this process. ``epoch`` seeds the shuffle and augmentation
        (so a resumed run sees exactly the same batches); ``None`` = evaluation order."""
        cfg = self.config
        generator = augmenter = None
        if epoch is not None:
            generator = torch.Generator().manual_seed(cfg.engine.seed * 100_003 + epoch)
        order = shard_order(len(data), self.runtime, generator, data.device, drop_last=epoch is not None)
        photo_gen = None
        if augment:
            aug_gen = torch.Generator(device=data.device).manual_seed(cfg.engine.seed * 100_003 + epoch + 7_919)
            augmenter = BatchAugment(data.tasks, generator=aug_gen, scale_range=cfg.data.scale_bounds(),
                                     out_size=parse_size(cfg.data.crop) if cfg.data.crop else None,
                                     focus=cfg.data.focus_crops, paste=self.paste_ids)
        if epoch is not None and cfg.data.photometric:
            photo_gen = torch.Generator(device=data.device).manual_seed(cfg.engine.seed * 100_003 + epoch + 15_013)
        def transform(batch: dict) -> dict:
            if augmenter is not None:
                batch = augmenter(batch)
            if photo_gen is not None:
                batch["image"] = photometric(batch["image"], photo_gen)
            return self._prepare(batch)

        return data.batches(order, batch_size, drop_last=epoch is not None, transform=transform)

    def _task_losses(self, outputs: dict, batch: dict) -> tuple[dict, torch.Tensor]:
        losses, has_valid = {}, []
        for t in self.tasks:
            target = batch[t.name]
            source = self.label_sources.get(t.name)
            extra = {"segmentation": (batch[source.name], source.class_set)} if source else {}
            losses[t.name] = t.loss(outputs[t.name], target, image=batch["image"], **extra, **self.loss_options[t.name])
            has_valid.append(t.has_valid(target))
        return losses, torch.stack(has_valid)

    def _forward_backward(self, model, batch: dict, micro: tuple[int, int] = (0, 1)):
        """Forward, weighted loss and backward of one batch: batch ``micro[0]`` of the ``micro[1]``
        that make one optimiser step (gradients zeroed at the first, added up to the last; DDP
        averages over the processes at the last only)."""
        self.parts.micro = micro
        if micro[0] == 0:
            self.optimizer.zero_grad(set_to_none=True)
        last = micro[0] == micro[1] - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with self._autocast():
                outputs = model(batch["image"])
            losses, has_valid = self._task_losses(outputs, batch)
            self.weighting.backward(losses, self.parts)
        if self.sync_by_hand and last:  # what DDP does for the other methods: the mean gradient of all processes
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                self._average([flat])
                offset = 0
                for g in grads:
                    g.copy_(flat[offset:offset + g.numel()].view_as(g))
                    offset += g.numel()
        return losses, has_valid

    def _learn_from_step(self, batches: list[dict], befores: list[dict]) -> None:
        """FAMO's second look: the step's batches' task losses after the update (their mean, as
        before it), without gradients and without touching the BatchNorm statistics."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        kept = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                for m in norms]
        afters = []
        try:
            for m in norms:
                m.momentum = 0.0
            for batch in batches:
                with torch.no_grad(), self._autocast():
                    outputs = self.model(batch["image"])
                afters.append(self._task_losses(outputs, batch)[0])
        finally:
            for m, momentum, tracked in kept:
                m.momentum = momentum
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)

        def mean(found):
            return torch.stack([torch.stack([f[t.name].detach().float() for t in self.tasks]) for f in found]).mean(0)
        pair = torch.stack([mean(befores), mean(afters)])
        self._average([pair])
        self.weighting.after_step(pair[0], pair[1])

    def train_epoch(self, epoch: int) -> dict:
        cfg, acc = self.config, self.config.optim.accumulate
        self.model.train()
        tally = EpochLosses(self.tasks, self.runtime.device)
        n_batches = max(1, len(self.train_data) // self.runtime.world // cfg.optim.batch_size // acc) * acc
        group, group_losses = [], []  # the batches of the step being made (FAMO looks at them again)
        bar = tqdm(itertools.islice(self._batches(self.train_data, cfg.optim.batch_size, epoch, cfg.data.augment), n_batches),
                   total=n_batches,
                   desc=f"epoch {epoch + 1}/{cfg.optim.epochs} train", unit="batch", leave=False,
                   disable=not self.show_progress)
        t0, last_shown = time.perf_counter(), 0.0
        last_checked = last_logged = t0
        for step, batch in enumerate(bar):
            micro = (step % acc, acc)
            losses, has_valid = self._first_or_next_batch(batch, micro)
            if self.weighting.learns_from_step:
                group.append(batch)
                group_losses.append(losses)
            if micro[0] == acc - 1:  # the step's last batch: update
                self._optimizer_step(group, group_losses)
                group, group_losses = [], []
            tally.add(losses, has_valid, batch["image"].shape[0])
            now = time.perf_counter()
            if bar.disable is False and now - last_shown > 1.0:  # a host read at most once a second
                bar.set_postfix({t.name: f"{v:.4f}" for t, v in zip(self.tasks, tally.means())})
                last_shown = now
            if not self.show_progress and now - last_logged > PROGRESS_EVERY_S:  # a log file: a line a minute
                last_logged = now
                self.log(f"epoch {epoch + 1}/{cfg.optim.epochs}: {step + 1}/{n_batches} batches, "
                         f"{tally.images / (now - t0):.1f} images/s, loss "
                         + " ".join(f"{t.name} {v:.4f}" for t, v in zip(self.tasks, tally.means())))
            if not self.runtime.distributed and now - last_checked > 2.0:
                last_checked = now  # a diverged run stops within seconds, not at the end of the epoch
                if bool(tally.nonfinite.any()):
                    break
        bar.close()
        tally.reduce(self.runtime)
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)
        return {"loss": dict(zip((t.name for t in self.tasks), tally.means())),
                "seconds": time.perf_counter() - t0, "images": tally.images * self.runtime.world,
                "nonfinite": [t.name for t, b in zip(self.tasks, tally.nonfinite.tolist()) if b]}

    def _first_or_next_batch(self, batch: dict, micro: tuple[int, int]):
        """:meth:`_forward_backward` of one batch; the first compiled one falls back to eager
        execution (with a warning) when compiling fails."""
        if not self.compile_unproven:
            return self._forward_backward(self.forward_module, batch, micro)
        try:
            result = self._forward_backward(self.forward_module, batch, micro)
        except Exception as e:  # noqa: BLE001 (inductor, missing compiler, unsupported op...)
            self.log(f"warning: torch.compile failed at the first step ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:300] if str(e) else ''}); continuing eagerly")
            self.forward_module = self._wrap(False)
            result = self._forward_backward(self.forward_module, batch, micro)
        self.compile_unproven = False
        return result

    def _optimizer_step(self, group: list[dict], group_losses: list[dict]) -> None:
        """The update after a step's last batch: the weighting's own parameters averaged over the
        processes, the optimiser's step, BatchNorm statistics shared, FAMO's second look at the
        step's batches, and the learning rate of a per-batch schedule."""
        if self.runtime.distributed and any(p.grad is not None for p in self.weighting.parameters()):
            self._average([p.grad for p in self.weighting.parameters()])
        self.optimizer.step()
        if self.sync_by_hand:  # as DDP does: every process continues with rank 0's BatchNorm statistics
            for b in self.model.buffers():
                dist.broadcast(b, 0)
        if self.weighting.learns_from_step:
            self._learn_from_step(group, group_losses)
        if self.step_schedule_per_batch:
            self.scheduler.step()

    @torch.no_grad()
    def evaluate(self, data) -> dict:
        """Losses and metrics of the current model on a validation set (on the device)."""
        return evaluate_model(self.model, data, self.config.engine.eval_batch_size or self.config.optim.batch_size,
                              runtime=self.runtime, autocast=self._autocast, prepare=self._prepare,
                              batches=lambda d, bs: self._batches(d, bs, None, False))

    # ---- the run ------------------------------------------------------------------------

    def resume(self) -> None:
        if self.runtime.is_main:
            clean_stale_temporaries([self.out, self.out / "checkpoints", self.out / "best"], log=self.log)
        found = latest_good_checkpoint(self.out / "checkpoints", log=self.log)
        if found is None:
            raise CheckpointError(f"{self.out}: no readable checkpoint to resume from (checkpoints/epoch_*.safetensors); "
                                  f"start the run again without --resume")
        epoch, tensors, header = found
        restore(tensors, header, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                weighting=self.weighting)
        self.start_epoch = epoch + 1
        self.best_score = header.get("best_score", -math.inf)
        self.history = read_metrics(self.out / "metrics.jsonl")[: epoch + 1]
        if self.runtime.is_main:
            atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        self.log(f"resumed {self.out}: {epoch + 1} of {self.config.optim.epochs} epochs done (from epoch_{epoch:04d}.safetensors), "
                 f"continuing with epoch {epoch + 2}")

    def fit(self) -> list[dict]:
        cfg = self.config
        if self.runtime.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "train_config.json", cfg.to_json() + "\n")
            if self.start_epoch == 0:  # a new run: no metrics from a run that stopped before its first checkpoint
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self.log(f"training {cfg.model.arch} x{cfg.model.width:g} ({count_parameters(self.model):,} parameters) on "
                 f"{cfg.data.name}: {len(self.train_data)} train frames, val "
                 f"{ {k: len(v) for k, v in self.val_data.items()} }, device {self.runtime.device}"
                 f"{f' x {self.runtime.world} processes' if self.runtime.distributed else ''}, "
                 f"amp {'bf16' if self.amp_dtype is not None else 'off'}{', channels-last' if self.channels_last else ''}, out {self.out}")
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            lr = self.optimizer.param_groups[0]["lr"]
            self.weighting.begin_epoch(epoch)  # DWA fixes this epoch's weights from the recorded losses
            weights = None if self.weighting.weights_after_epoch else self.weighting.weights()
            train = self.train_epoch(epoch)
            if train["nonfinite"]:
                raise NonFiniteLossError(self._nonfinite_message(epoch, train["nonfinite"]))
            if weights is None:  # learnt or drawn per step: the weights of the epoch that ran
                weights = self.weighting.weights()
            self.weighting.end_epoch(train["loss"])
            if not self.step_schedule_per_batch:
                self.scheduler.step()
            record = {"epoch": epoch + 1, "lr": lr, "weights": weights,
                      "train": {f"loss.{k}": v for k, v in train["loss"].items()},
                      "epoch_seconds": round(train["seconds"], 3),
                      "images_per_second": round(train["images"] / max(train["seconds"], 1e-9), 2)}
            if (epoch + 1) % cfg.engine.eval_every == 0 or epoch + 1 == cfg.optim.epochs:
                t_eval = time.perf_counter()
                record["val"] = {name: self.evaluate(data) for name, data in self.val_data.items()}
                for name, metrics in record["val"].items():  # Delta_m against the single-task runs
                    if name in self.baselines:
                        found = with_delta_m(metrics, self.baselines[name])
                        metrics["delta_m"] = found["delta_m"]
                        metrics.update({f"delta_m.{k}": v for k, v in found["delta_m.changes"].items()})
                record["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
            self.history.append(record)
            if self.runtime.is_main:
                try:
                    self._write_epoch(epoch, record)
                except (CheckpointError, OSError) as e:
                    raise CheckpointError(self._write_failed_message(epoch, e)) from None
            self.log(summary_line(record, cfg.optim.epochs))
        if self.runtime.distributed:
            dist.barrier()
        return self.history

    def _last_checkpoint(self, before: int) -> Path | None:
        found = [p for e, p in list_checkpoints(self.out / "checkpoints") if e < before]
        return found[0] if found else None

    def _nonfinite_message(self, epoch: int, tasks: list[str]) -> str:
        last = self._last_checkpoint(epoch)
        kept = (f"The last good checkpoint, {last} (epoch {int(last.stem.split('_')[1]) + 1}), and the model "
                f"exported from it are kept; try a lower --lr or check the data for bad values, then continue "
                f"with: python train.py --resume {self.out}") if last else (
                "No checkpoint had been written yet; try a lower --lr or check the data for bad values, then "
                "start the run again")
        which = " and ".join(f"'{t}'" for t in tasks) + (" task's" if len(tasks) == 1 else " tasks'")
        return (f"epoch {epoch + 1}: the {which} training loss became NaN or infinite; training stopped "
                f"before saving anything from this epoch. {kept}")

    def _write_failed_message(self, epoch: int, error: Exception) -> str:
        if isinstance(error, CheckpointError):
            reason = error.short
        else:
            where = getattr(error, "filename", None) or self.out
            reason = f"could not write {where}: {getattr(error, 'strerror', None) or error}"
        last = self._last_checkpoint(epoch + 1)
        saved = last is not None and last.name == f"epoch_{epoch:04d}.safetensors"
        then = (f"the newest complete checkpoint, {last}, is intact. Free disk space (or fix the folder's "
                f"permissions), then continue with: python train.py --resume {self.out}") if last else (
                "no checkpoint had been written yet. Free disk space (or fix the folder's permissions), then "
                "start the run again")
        return f"epoch {epoch + 1}: {reason}. Its checkpoint was {'' if saved else 'not '}saved; {then}"

    def _write_epoch(self, epoch: int, record: dict) -> None:
        cfg = self.config
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        plot_curves(self.history, self.out / "curves.png")
        score = monitor_score(record)
        improved = score is not None and score > self.best_score
        if improved:
            self.best_score = score
        card = self.card_kwargs(record)
        if "val" in record or epoch + 1 == cfg.optim.epochs:
            export(self.model, self.out, card)  # the last model, at the top of the run folder
        if improved:
            export(self.model, self.out / "best", {**card, "notes": f"Best validation score at epoch {epoch + 1}."})
        # The checkpoint comes last: it marks the epoch as complete, so an epoch whose outputs failed
        # (or were cut short by a crash) is trained and written again by --resume.
        save_checkpoint(self.out / "checkpoints" / f"epoch_{epoch:04d}.safetensors", model=self.model,
                        optimizer=self.optimizer, scheduler=self.scheduler, weighting=self.weighting,
                        meta={"epoch": epoch, "best_score": self.best_score, "config": dataclasses.asdict(cfg),
                              "amp": "bf16" if self.amp_dtype is not None else "off",
                              "channels_last": "on" if self.channels_last else "off", "cpu": cpu_identity()})
        prune_checkpoints(self.out / "checkpoints", keep=cfg.engine.keep_checkpoints)

    def card_kwargs(self, record: dict) -> dict:
        cfg = self.config
        val = record.get("val") or (self.history and self._last_val()) or {}
        first = next(iter(val.values()), {}) if val else {}
        dataset_name = spec(cfg.data.name.split("+")[0]).title
        table = {f"{name}/{k}" if len(val) > 1 else k: v for name, m in val.items() for k, v in m.items()
                 if not k.startswith("loss.")}
        return {
            "training_command": cfg.command,
            "data": f"`{cfg.data.name}` ({cfg.data.size or 'native size'}), {len(self.train_data)} training frames; "
                    f"validation on {', '.join(val) or '-'}; {cfg.optim.epochs} epochs, batch {cfg.optim.batch_size}, "
                    f"{cfg.optim.weighting} weighting, augmentation {'on' if cfg.data.augment else 'off'}",
            "dataset_name": dataset_name, "dataset_type": cfg.data.name.split("+")[0],
            "results": {k: v for k, v in first.items() if not k.startswith("loss.") and v is not None},
            "extra_results": table,
            "repo_id": cfg.hub.repo,
        }

    def _last_val(self):
        for r in reversed(self.history):
            if "val" in r:
                return r["val"]
        return {}


class NonFiniteLossError(RuntimeError):
    """A task's training loss became NaN or infinite."""


def compile_or_eager(model, log):
    try:
        return torch.compile(model)
    except Exception as e:  # e.g. no compiler toolchain on this platform
        log(f"warning: torch.compile is unavailable ({type(e).__name__}: {e}); running eagerly")
        return model
