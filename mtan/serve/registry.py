"""The models the app offers: each loaded once (from a folder or the Hub) with its card and its
measured records, kept, and replaced by the local default with a notice when it cannot be had."""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtan.inference.compiled import COMPILE_MODES, CompileWarmUp, warm_up_sizes
from mtan.inference.fast import optimize_for_inference, resolve_precision
from mtan.model import MTAN, ModelConfigError
from mtan.records import PRECISIONS_FILE, RESOLUTIONS_FILE, ResolutionAdvice, allowed_precisions, read_record
from mtan.records import int8_scales as recorded_int8_scales
from mtan.inference import Resolution
from mtan.serve.process import ACTIVITY
from mtan.runtime import pick_device
from mtan.serve.sources import (hub_file, hub_reachable, is_hub_id, json_or_none, model_label, resolve_local,
                                strip_front_matter)

log = logging.getLogger("mtan.app")


class ModelUnavailableError(RuntimeError):
    """No model could be loaded (neither the requested one nor the local default)."""


@dataclass
class LoadedModel:
    key: str                  # what was asked for (a dropdown value)
    source: str               # what was actually loaded (differs after a fallback)
    model: MTAN
    card: str = ""            # the model card, YAML front matter removed
    notices: list[str] = field(default_factory=list)
    resolutions: ResolutionAdvice = field(default_factory=lambda: ResolutionAdvice.from_record(None))
    precisions: tuple[str, ...] = ("fp32",)  # those that keep the model's quality (its precisions.json)
    precision: str = "auto"                  # what to run: auto = the fastest of ``precisions`` here
    int8_scales: dict | None = None          # int8's activation scales (its precisions.json)
    compile: str = "off"                     # auto: torch.compile warmed up in the background (mtan.inference.compiled)
    precisions_recorded: bool = False        # whether the model has a precisions.json at all
    _warm_up: CompileWarmUp | None = field(default=None, repr=False)  # started with the runner (compile="auto")

    @property
    def placeholder(self) -> bool:
        return "placeholder" in self.card.lower()

    @functools.cached_property
    def runner(self):
        """What runs the photos: the inference copy of ``mtan.inference.fast`` (BatchNorm folded, fused
        convolutions, channels-last), built once, in ``precision`` (``auto``: the fastest on this
        machine of the precisions that keep the model's quality, timed at the default processing
        resolution and remembered); ``MTAN_FAST_INFERENCE=0`` uses the plain model. Falls back to
        the plain model if the copy cannot be built."""
        runner = self.model
        if os.environ.get("MTAN_FAST_INFERENCE", "1") != "0":
            try:
                runner = optimize_for_inference(self.model, precision=self.precision, allowed=self.precisions,
                                                size=Resolution.parse(self.resolutions.default),
                                                int8_scales=self.int8_scales)
                runner.float32_masks = False  # quantise_mask converts them (one pass fewer)
            except Exception as e:  # never lose the demo over an optimisation
                log.warning("fast inference unavailable (%s: %s); using the plain model", type(e).__name__, e)
        log.warning("mtan app: %s", self.describe_runner(runner))  # the terminal says what runs each model
        if self.compile == "auto" and hasattr(runner, "compiled_shapes"):
            try:
                self._warm_up = CompileWarmUp(
                    runner, warm_up_sizes(Resolution.parse(self.resolutions.default)),
                    wait_until_idle=ACTIVITY.wait_until_idle).start(
                    on_done=lambda warm: log.warning("mtan app: %s: compile warm-up done; %s", model_label(self.key),
                                                    warm.describe()))
            except Exception as e:
                log.warning("torch.compile unavailable (%s: %s); eager", type(e).__name__, e)
        return runner

    @property
    def warm_up(self) -> CompileWarmUp | None:
        """The background torch.compile warm-up of the runner (``compile="auto"``), if one started."""
        self.runner
        return self._warm_up

    def compiled_for(self, shape) -> bool:
        """Whether the compiled network runs inputs of ``shape`` (N, 3, H, W, padded) now."""
        shapes = getattr(self.runner, "compiled_shapes", None)
        return getattr(self.runner, "_compiled", None) is not None and (shapes is None or tuple(shape) in shapes)

    @property
    def running(self) -> str:
        """The precision that runs, in a word (the app's summary line): ``fp32``, ``bf16`` ..."""
        return getattr(self.runner, "precision", "fp32")

    @property
    def startup_line(self) -> str:
        """What runs the photos and why, in one plain sentence (the app's first line)."""
        return self.describe_runner(self.runner)

    def describe_runner(self, runner) -> str:
        precision = getattr(runner, "precision", "fp32")
        device = getattr(runner, "device", None) or next(self.model.parameters()).device
        where = "the CPU" if torch.device(device).type == "cpu" else str(device)
        choice = getattr(runner, "choice", None)
        if self.precision != "auto":
            why = "as --precision asks"
        elif choice:
            times = ", ".join(f"{p} {t * 1000:.0f} ms" for p, t in choice["seconds"].items())
            when = (", measured at an earlier start" if choice.get("remembered") else
                    "; the machine was busy while it measured, so this is measured again at the next start"
                    if choice.get("quiet") is False else "")
            why = (f"the fastest here of the precisions that keep this model's quality ({times} a photo at "
                   f"{choice['size']}{when})")
        elif tuple(self.precisions) == ("fp32",):
            why = ("this model's precisions.json keeps no reduced precision" if self.precisions_recorded else
                   "this model has no precisions.json saying which reduced precisions keep its quality; "
                   "--precision forces one")
        else:
            why = "the only precision this machine runs of those that keep the model's quality"
        return f"{model_label(self.key)} runs on {where} in {precision}: {why}"

    @property
    def runner_description(self) -> str:
        """What runs the photos and why (the app's start-up line)."""
        runner = self.runner
        text = runner.describe() if hasattr(runner, "describe") else "the plain model (fp32, eager)"
        return text + (f"; {self.warm_up.describe()}" if self.warm_up else "")


class ModelRegistry:
    """Models by key (a local folder or a Hub repo id), each loaded once and cached.

    A model that cannot be loaded (Hub unreachable, missing or broken folder) is replaced by the
    local default model, with a notice that says why; only when that fails too does ``get``
    raise :class:`ModelUnavailableError`.
    """

    def __init__(self, sources: list[str], default_local: str | Path = "weights",
                 device: torch.device | str | None = None, hub_timeout: float = 3.0, precision: str = "auto",
                 compile: str = "off", fallback: bool = False):
        """``fallback``: a model that cannot be loaded is replaced by ``default_local`` (with a notice
        on the page); without it, asking for that model is an error that says why."""
        if not sources:
            sources = [str(default_local)]
        self.sources = list(dict.fromkeys(str(s).strip() for s in sources if str(s).strip()))
        self.default_local = str(default_local)
        self.fallback = bool(fallback)
        self.device = pick_device(str(device) if device else None)
        self.hub_timeout = hub_timeout
        self.precision = resolve_precision(precision)
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
        self.compile = compile
        self._models: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._hub_ok: bool | None = None

    @classmethod
    def from_env(cls, model: str | None = None, models: str | None = None, default_local: str | None = None,
                 device: str | None = None, precision: str = "auto", compile: str = "off",
                 fallback: bool = False) -> "ModelRegistry":
        """``model`` / ``MTAN_MODEL``: the default choice; ``models`` / ``MTAN_MODELS``: comma-separated
        dropdown choices; ``default_local`` / ``MTAN_DEFAULT_MODEL``: the local model served instead of
        one that cannot be loaded, when ``fallback`` asks for that (``weights/``)."""
        default_local = default_local or os.environ.get("MTAN_DEFAULT_MODEL") or "weights"
        model = model or os.environ.get("MTAN_MODEL") or None
        listed = [s.strip() for s in (models or os.environ.get("MTAN_MODELS") or "").split(",") if s.strip()]
        sources = ([model] if model else []) + listed
        if not sources:
            sources = [default_local]
        return cls(sources, default_local=default_local, device=device, precision=precision, compile=compile,
                   fallback=fallback)

    @property
    def default_key(self) -> str:
        return self.sources[0]

    def choices(self) -> list[tuple[str, str]]:
        return [(model_label(s), s) for s in self.sources]

    def hub_ok(self) -> bool:
        if self._hub_ok is None:
            self._hub_ok = hub_reachable(self.hub_timeout)
        return self._hub_ok

    def get(self, key: str | None = None) -> LoadedModel:
        key = key or self.default_key
        if key not in self.sources:
            raise ModelUnavailableError(f"unknown model {key!r}; this app offers: {', '.join(self.sources)}")
        cached = self._models.get(key)  # fast path: no waiting behind another model's download
        if cached is not None:
            return cached
        with self._lock:  # one load at a time; later calls get the cached model
            if key in self._models:
                return self._models[key]
            if key in self._errors:
                raise ModelUnavailableError(self._errors[key])
            try:
                loaded = self._load(key)
            except ModelUnavailableError as e:
                self._errors[key] = str(e)
                raise
            self._models[key] = loaded
            return loaded

    def _is_default(self, source: str) -> bool:
        here, default = resolve_local(source), resolve_local(self.default_local)
        return here is not None and default is not None and here.resolve() == default.resolve()

    def _load(self, key: str) -> LoadedModel:
        try:
            return self._load_source(key)
        except Exception as e:  # whatever the reason (offline, broken folder), fall back: never crash
            reason = str(e) or type(e).__name__
        if self._is_default(key):
            raise ModelUnavailableError(f"the local default model could not be loaded: {reason}")
        if not self.fallback:
            raise ModelUnavailableError(f"{key} could not be loaded: {reason}")
        base = next((m for m in self._models.values() if m.key == m.source and self._is_default(m.source)), None)
        if base is None:
            try:
                base = self._load_source(self.default_local)
            except Exception as e:
                raise ModelUnavailableError(f"{key} could not be loaded ({reason}), nor the local default "
                                            f"{self.default_local} ({e})") from None
            if any(self._is_default(s) for s in self.sources):  # share it with the default's own entry
                self._models.setdefault(next(s for s in self.sources if self._is_default(s)), base)
        notice = (f"Could not load **{key}**: {reason}. Showing the local default model "
                  f"(`{self.default_local}`) instead.")
        loaded = LoadedModel(key=key, source=base.source, model=base.model, card=base.card,
                             notices=[notice] + base.notices, resolutions=base.resolutions,
                             precisions=base.precisions, precision=base.precision, int8_scales=base.int8_scales,
                             compile=base.compile)
        if "runner" in vars(base):  # the same weights: share the measured inference copy
            loaded.runner, loaded._warm_up = base.runner, base._warm_up
        return loaded

    def _load_source(self, source: str) -> LoadedModel:
        from mtan.model.files import HubUnavailableError

        card, record, precisions = "", None, None
        if is_hub_id(source):
            if not self.hub_ok():
                try:  # offline: a model already in the local Hub cache still works
                    model = MTAN.from_pretrained(source, map_location=self.device, local_files_only=True)
                except ModelConfigError:
                    raise HubUnavailableError(
                        f"the Hugging Face Hub is unreachable and {source} is not in the local cache") from None
            else:
                model = MTAN.from_pretrained(source, map_location=self.device)
            card = hub_file(source, "README.md")
            record = json_or_none(hub_file(source, RESOLUTIONS_FILE))
            precisions = json_or_none(hub_file(source, PRECISIONS_FILE))
        else:
            folder = resolve_local(source) or Path(source)
            model = MTAN.from_pretrained(folder, map_location=self.device)
            readme = folder / "README.md"
            if readme.is_file():
                card = readme.read_text(encoding="utf-8", errors="replace")
            if (folder / RESOLUTIONS_FILE).is_file():
                record = json_or_none((folder / RESOLUTIONS_FILE).read_text(encoding="utf-8", errors="replace"))
            precisions = read_record(folder)
        loaded = LoadedModel(key=source, source=source, model=model, card=strip_front_matter(card),
                             resolutions=ResolutionAdvice.from_record(record),
                             precisions=allowed_precisions(precisions), precision=self.precision,
                             int8_scales=recorded_int8_scales(precisions), compile=self.compile,
                             precisions_recorded=precisions is not None)
        if loaded.placeholder:
            loaded.notices.append(f"The model `{source}` is a **placeholder** (its model card says so): "
                                  f"its predictions are not meaningful yet.")
        return loaded


def load_default_model(registry: "ModelRegistry", stop_on_error: bool = True) -> tuple[LoadedModel | None, str]:
    """The app's default model at start, and the page's error if there is none. The terminal says
    what runs (and, with a fallback, what could not be loaded). A model that cannot be loaded
    stops the process with one line and exit code 2 when ``stop_on_error``, so that nothing is
    served that would disagree with the terminal."""
    try:
        loaded = registry.get()
    except ModelUnavailableError as e:
        if stop_on_error:
            print(f"mtan app: cannot start: {e}. Check --model / MTAN_MODEL (a model folder with config.json and "
                  f"model.safetensors, or a Hub id USER/NAME), or add --fallback to serve the local default model "
                  f"instead.", file=sys.stderr, flush=True)
            sys.exit(2)
        return None, f"No model could be loaded: {e}"
    if loaded.source != loaded.key:
        print(f"mtan app: {loaded.key} could not be loaded; serving the local default model {loaded.source} in its "
              f"place (--fallback)", file=sys.stderr, flush=True)
    loaded.runner  # built (and timed) now: building it prints what runs, and why
    return loaded, ""
