"""torch.compile for inference, used only where it is measured faster.

Compiling the inference copy (:mod:`mtan.inference.fast`) with ``torch.compile`` makes a forward pass
10-20 % faster on some CPUs, but the first call at each input size compiles for about a minute
on two cores, and a compiled network that is not faster is no gain. So the app compiles in a
background thread, at low priority, one input size after another (the sizes that photos of the
common aspect ratios get at the default processing resolution), while requests run the eager
copy; for each size it then times eager against compiled and hands the compiled network the
requests of that size only when it is faster by more than 10 %. Requests of any other size, and
every request if compiling fails, run eager. The outcome is remembered per processor, torch
version, thread count, network shape, precision and size (:mod:`mtan.timing`), so that a restart
does not compile where compiling did not pay.

    warm = CompileWarmUp(runner, warm_up_sizes((256, 512)))
    warm.start()          # returns at once; runner.compiled_shapes fills as sizes prove faster
"""
from __future__ import annotations

import logging
import os
import threading
import time

import torch

from mtan.inference.pipeline import Resolution
# torch.compile's own loggers warn about things that are expected here (no CUDA on a CPU machine,
# quantised tensors it cannot trace and runs eagerly): the outcome is measured and reported instead.
COMPILER_LOGGERS = ("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension")


def quiet_compiler_logs() -> None:
    """torch.compile's internal warnings off (errors still show); the warm-up reports what it measured."""
    for name in COMPILER_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
from mtan.timing import measure, remember_choice, remembered_choice, still_fresh

COMPILE_MODES = ("auto", "off")
# Photo shapes warmed up, in this order: street datasets and dash cams (2:1), phones and cameras
# held sideways (4:3), video (16:9).
ASPECTS = ((1, 2), (3, 4), (9, 16))


def warm_up_sizes(box: tuple[int, int], aspects=ASPECTS) -> list[tuple[int, int]]:
    """The network input sizes (padded to multiples of 32, as ``predict`` pads) of photos of
    ``aspects`` (h, w ratios) fitted inside ``box``, without repeats."""
    sizes = []
    for ah, aw in aspects:
        size = Resolution.parse(box).network_size(ah * 1000, aw * 1000)
        if size not in sizes:
            sizes.append(size)
    return sizes


def compile_key(runner, size: tuple[int, int]) -> str:
    """What a compile measurement depends on: the precision measurement's key, the precision and the size."""
    from mtan.inference.fast import choice_key

    return f"compile | {choice_key(runner, [runner.precision], size, runner.device)}"


def _lower_priority() -> None:
    """This thread (and the compiler's worker processes it starts) at the lowest CPU priority,
    so that requests served meanwhile keep the cores (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class CompileWarmUp:
    """Compiles ``runner`` (an :class:`~mtan.inference.fast.InferenceModel`) for each of ``sizes`` (h, w),
    times it against eager and lets the compiled network run the sizes where it is faster.
    ``status`` says, per size, what was measured and what runs; ``error`` why compiling stopped."""

    def __init__(self, runner, sizes, margin: float = 0.1, repeats: int = 5, remember: bool = True,
                 wait_until_idle=None):
        """``wait_until_idle()``: returns when the server has been quiet for a while; called before
        each size is compiled and before it is timed, so that the warm-up never takes the cores
        from a visitor's request (the app passes its request counter's)."""
        self.runner, self.sizes = runner, [tuple(s) for s in sizes]
        self.wait_until_idle = wait_until_idle or (lambda: None)
        self.margin, self.repeats, self.remember = margin, repeats, remember
        self.status: dict[str, dict] = {}
        self.error: str | None = None
        self.thread: threading.Thread | None = None
        self.done = threading.Event()
        if runner.compiled_shapes is None:
            runner.compiled_shapes = set()
        if runner._compiled is None:
            runner._compiled = torch.compile(runner.net, dynamic=False)

    def start(self, low_priority: bool = True, on_done=None) -> "CompileWarmUp":
        """Warm up in a background thread (at the lowest CPU priority); ``on_done(self)`` after."""
        quiet_compiler_logs()

        def work():
            if low_priority:
                _lower_priority()
            self.run()
            if on_done is not None:
                on_done(self)

        self.thread = threading.Thread(target=work, name="mtan-compile-warm-up", daemon=True)
        self.thread.start()
        return self

    def run(self) -> dict:
        """Warm up every size, one after another (in this thread). Returns ``status``."""
        try:
            for size in self.sizes:
                self._warm_up(size)
                if self.runner._compiled is None:  # a compiled call failed: eager from now on
                    self.error = self.runner.compile_error
                    break
        except Exception as e:  # never lose the app over an optimisation
            self.error = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            self.done.set()
        return self.status

    def _warm_up(self, size: tuple[int, int]) -> None:
        runner, name = self.runner, f"{size[0]}x{size[1]}"
        key = compile_key(runner, size)
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
        known = remembered_choice(key) if self.remember else None
        if known is not None and not known.get("compiled") and known.get("quiet", True):
            # "compiled is not faster", measured at an earlier start: kept while eager still takes what it did
            with torch.inference_mode():
                fresh, _ = still_fresh(float(known["seconds"].get("eager", 0)),
                                       lambda: runner(x, return_attention=True, use_compiled=False))
            if fresh:
                self.status[name] = dict(known, remembered=True)
                return
        shape = (1, 3, *size)
        self.wait_until_idle()
        with torch.inference_mode():  # as the app runs photos: the compiled graph guards on it
            start = time.perf_counter()
            runner(x, return_attention=True, use_compiled=True)  # compiles (about a minute on two cores)
            compile_s = time.perf_counter() - start
            if runner._compiled is None:
                return
            # Requests meanwhile run eager: the shape joins compiled_shapes only once it proved faster.
            paths = {path: (lambda c=compiled: runner(x, return_attention=True, use_compiled=c))
                     for path, compiled in (("eager", False), ("compiled", True))}
            self.wait_until_idle()
            m = measure(paths, warmup=1, repeats=self.repeats, margin=self.margin)
        record = {"compiled": m.best == "compiled", "compile_s": round(compile_s, 1), **m.record()}
        if m.best == "compiled":
            runner.compiled_shapes.add(shape)
        self.status[name] = record
        if self.remember and m.quiet:  # a verdict taken while the machine was busy is not kept
            remember_choice(key, record)

    def describe(self) -> str:
        """One line: what runs compiled, what was measured, what is still warming up."""
        if self.error:
            return f"torch.compile unavailable ({self.error}); eager"
        parts = []
        for size in self.sizes:
            name = f"{size[0]}x{size[1]}"
            s = self.status.get(name)
            if s is None:
                parts.append(f"{name} warming up")
                continue
            times = s["seconds"]
            verdict = "compiled" if s.get("compiled") else "eager (compiled not faster)"
            parts.append(f"{name} {verdict}: eager {times['eager'] * 1000:.0f} ms, compiled "
                         f"{times['compiled'] * 1000:.0f} ms{', measured earlier' if s.get('remembered') else ''}")
        return "torch.compile: " + "; ".join(parts)


__all__ = ["CompileWarmUp", "warm_up_sizes", "compile_key", "COMPILE_MODES", "ASPECTS"]
