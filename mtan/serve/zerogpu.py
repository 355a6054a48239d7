"""ZeroGPU Spaces: the Hugging Face ``spaces`` package's GPU decorator around the work that needs the
GPU, where the Space runs on ZeroGPU hardware; elsewhere the function as it is.

A ZeroGPU Space lends a GPU only while a function decorated with ``spaces.GPU`` runs, so the app
decorates the one call that runs the network on a photo. Everywhere else (a CPU Space, a GPU
Space, a laptop) the decorator is not applied, so nothing changes and ``spaces`` need not be
installed.
"""
from __future__ import annotations

import os


def on_zerogpu() -> bool:
    """Whether this process runs on a ZeroGPU Space (the Hub sets ``SPACES_ZERO_GPU`` there)."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def gpu_task(fn, duration: int = 60):
    """``spaces.GPU(fn, duration=...)`` on ZeroGPU (``duration``: the seconds a call may hold the
    GPU), else ``fn`` itself."""
    if not on_zerogpu():
        return fn
    try:
        import spaces
    except ImportError:
        raise RuntimeError("this Space runs on ZeroGPU but the `spaces` package is missing: add `spaces` to "
                           "requirements.txt") from None
    return spaces.GPU(fn, duration=duration)
