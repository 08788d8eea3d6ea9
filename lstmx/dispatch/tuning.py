"""Layer choices measured on this machine (``lstmx tune``), which "auto" reads before its own thresholds.

:func:`tune` times one layer's training step (forward + backward) on every implementation "auto" may pick for a
call (the backend, dtype, cell, cell options, lengths or not, batch and hidden size), the implementations taking
turns, and records the fastest in a small JSON cache together with the device's name and lstmx's version.
:func:`tuned_choice` gives that implementation back for the same call on the same device with the same version;
an entry of another device or version is ignored, as is a cache that cannot be read (with one warning), and
"auto" then falls back to the registry's thresholds. Only exact calls match: a size not tuned takes the
thresholds too. A process reads the cache once (and again after it records a choice itself): a tuning run in
another process reaches the next one.

The cache lives at ``$LSTMX_TUNE_CACHE`` (a default, as every ``LSTMX_*`` variable), else
``$XDG_CACHE_HOME/lstmx/tune.json`` (``~/.cache/lstmx/tune.json``). It is written whole (a temporary file
renamed over it) under a file lock, so two tuning runs never lose each other's entries.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from ..backend import Backend, dtype_name, is_cupy

CACHE_VARIABLE = "LSTMX_TUNE_CACHE"
FORMAT = 1


class TuneKey(NamedTuple):
    """What a tuned choice is for; an entry answers only a call with the same key."""

    backend: str
    device: str
    dtype: str
    cell: str  # "lstm" or "lstmp"
    options: tuple[str, ...]  # the cell options, sorted
    masked: bool  # with lengths (a step mask)
    batch: int
    hidden: int

    def as_json(self) -> dict[str, Any]:
        return {**self._asdict(), "options": list(self.options)}


def cache_path() -> Path:
    """Where the tuned choices are kept: ``$LSTMX_TUNE_CACHE``, else the user's cache folder."""
    given = os.environ.get(CACHE_VARIABLE)
    return Path(given) if given else _user_cache_path()


@functools.cache
def _user_cache_path() -> Path:  # resolved once: finding the home folder costs more than a layer's choice
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lstmx" / "tune.json"


def device_name(backend: Backend) -> str:
    """The device a choice was measured on: the GPU's name, or the CPU's model and core count."""
    if is_cupy(backend):
        return _gpu_name(backend.device.id)
    return f"CPU {_cpu_model()}, {os.cpu_count()} cores"


@functools.cache
def _gpu_name(device: int) -> str:
    import cupy

    return f"GPU {cupy.cuda.runtime.getDeviceProperties(device)['name'].decode()}"


@functools.cache
def _cpu_model() -> str:
    try:  # Linux names the model here; platform.processor() is often empty there
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def key_for(backend: Backend, dtype: Any, masked: bool, sizes: tuple[int, int], cell: str,
            options: tuple[str, ...]) -> TuneKey:
    return TuneKey(backend.name, device_name(backend), dtype_name(dtype), cell, tuple(sorted(options)), bool(masked),
                   int(sizes[0]), int(sizes[1]))


def _version() -> str:
    from .. import __version__

    return __version__


_LOADED: dict[str, dict[TuneKey, str]] = {}  # path -> {key: impl}: read once per process (a forward chooses its
# layer on every call), and refreshed by record(), the one writer


def _choices(path: Path) -> dict[TuneKey, str]:
    if str(path) not in _LOADED:
        _LOADED[str(path)] = _read(path)
    return _LOADED[str(path)]


def _read(path: Path) -> dict[TuneKey, str]:
    """The choices of this lstmx version in the cache at ``path`` ({} when there is none or it cannot be read,
    with one warning for the latter)."""
    if not path.exists():
        return {}
    choices: dict[TuneKey, str] = {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            raise ValueError(f"format {document.get('format')!r}, not {FORMAT}")
        version = _version()
        for entry in document["entries"]:
            if entry["lstmx"] == version:
                key = TuneKey(**{**entry["key"], "options": tuple(entry["key"]["options"])})
                choices[key] = entry["impl"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"lstmx: the tuning cache {path} cannot be read ({type(error).__name__}: {error}); "
                      "\"auto\" uses its own thresholds (run lstmx tune again to rewrite it)", stacklevel=4)
        return {}
    return choices


def tuned_choice(backend: Backend, dtype: Any, masked: bool, sizes: tuple[int, int] | None, cell: str,
                 options: tuple[str, ...]) -> str | None:
    """The implementation ``lstmx tune`` measured fastest for this call on this device and version, or None."""
    if sizes is None:
        return None
    choices = _choices(cache_path())
    if not choices:
        return None
    return choices.get(key_for(backend, dtype, masked, sizes, cell, options))


class Tuned(NamedTuple):
    key: TuneKey
    impl: str  # the fastest
    ms: dict[str, float]  # each candidate's median ms per training step
    path: Path  # the cache it was written to


def tune(backend: Backend, dtype: Any, batch: int, hidden: int, *, features: int | None = None, steps: int = 50,
         proj_size: int = 0, options: dict[str, Any] | None = None, masked: bool = False, repeats: int = 5,
         timer: Callable[[], float] = time.perf_counter) -> Tuned:
    """Time every implementation "auto" may pick for a one-layer LSTM of these sizes (its dtypes and cell options;
    the hidden-size thresholds are what this replaces), ``options`` being cell options as ``lstmx.LSTM`` takes
    them and ``masked`` a batch with lengths; the candidates take turns ``repeats`` times after one warm-up call
    each, and the fastest by median is recorded in the cache. The arguments are checked by ``lstmx.LSTM`` and
    the CLI's flags."""
    from ..nn.models import LSTM
    from . import registry

    features = hidden if features is None else features
    model = LSTM(features, hidden, proj_size=proj_size, backend=backend, dtype=dtype_name(dtype), seed=0,
                 **(options or {}))
    cell = model.stack.cell_in_effect(True)
    names = cell.options.names()
    candidates = [impl.name for impl in registry.of_kind("layer")
                  if impl.auto_takes(registry.Call(model.backend, model.dtype, cell=cell.kind, options=names))
                  and impl.refuses(registry.Call(model.backend, model.dtype, masked, (batch, hidden), cell.kind,
                                                 names)) is None]
    rng = np.random.default_rng(0)
    x = model.backend.asarray(rng.standard_normal((steps, batch, features)), dtype=model.dtype)
    dy = model.backend.asarray(rng.standard_normal((steps, batch, model.stack.output_size)), dtype=model.dtype)
    lengths = None if not masked else [steps] + [max(1, steps - 1 - k % steps) for k in range(batch - 1)]
    synchronize = _synchronizer(model.backend)

    def step(impl: str) -> float:
        start = timer()
        _, _, cache = model.forward(x, lengths=lengths, impl=impl)
        model.backward(dy, cache)
        synchronize()
        return timer() - start

    times: dict[str, list[float]] = {name: [] for name in candidates}
    for name in candidates:
        step(name)  # compiled, allocated, warmed before any is timed
    for _ in range(repeats):
        for name in candidates:
            times[name].append(step(name))
    ms = {name: 1e3 * float(np.median(values)) for name, values in times.items()}
    fastest = min(ms, key=ms.get)
    key = key_for(model.backend, model.dtype, masked, (batch, hidden), cell.kind, names)
    return Tuned(key, fastest, ms, record(key, fastest, ms))


def _synchronizer(backend: Backend) -> Callable[[], None]:
    if is_cupy(backend):
        import cupy

        return cupy.cuda.Stream.null.synchronize
    return lambda: None


def record(key: TuneKey, impl: str, ms: dict[str, float]) -> Path:
    """Add (or replace) the entry for ``key`` in the cache, written whole under its lock; returns the path."""
    import filelock  # the writer's alone: importing it costs "import lstmx" a fifth of its time

    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock", timeout=60):
        entries = []
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format") == FORMAT:
                entries = [e for e in document.get("entries", []) if e.get("key") != key.as_json()
                           or e.get("lstmx") != _version()]
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: this run writes a fresh one
        entries.append({"key": key.as_json(), "lstmx": _version(), "impl": impl, "ms": ms,
                        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps({"format": FORMAT, "entries": entries}, indent=1) + "\n", encoding="utf-8")
        partial.replace(path)
        _LOADED[str(path)] = _read(path)
    return path
