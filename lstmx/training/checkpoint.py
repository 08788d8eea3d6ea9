"""Checkpoints: one ``.npz`` file (read with ``allow_pickle=False``) holding the arrays and a JSON document.

Arrays: ``params/<name>`` for the model, ``optimizer/<name>/<slot>`` for the optimizer state and ``state/h``,
``state/c`` for a carried hidden state. The JSON (stored as UTF-8 bytes under ``__lstmx__.json``) holds the
format tag and version, a manifest of every array's name, shape and dtype (zip's CRCs cover the bytes of
each member but not its name), the model class and config, the vocabulary, the optimizer's type, step and
hyper-parameters, the training step/position and the RNG states. No pickle anywhere.

Writes are atomic: a temporary file in the same folder, flushed and fsync'ed, then renamed over the target,
so a crash or a failed save never leaves a broken checkpoint or loses the previous one.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

FORMAT = "lstmx-checkpoint"
# 3: model configs name every layer option (LSTM: bidirectional, proj_size, batch_first; LanguageModel: proj_size)
# 2: the JSON lists the arrays ("arrays": name → [shape, dtype])
# Files of versions 1 and 2 still load: their models had none of version 3's options (:func:`model_config`).
VERSION = 3
_CELL_OPTIONS_BEFORE_VERSION_3 = {"peepholes": False, "input_forget": False, "cell_clip": None, "weight_drop": 0.0,
                                  "locked_dropout": False}
OPTIONS_BEFORE_VERSION_3 = {"LSTM": {"bidirectional": False, "proj_size": 0, "batch_first": False,
                                     "checkpoint_every": None, **_CELL_OPTIONS_BEFORE_VERSION_3},
                            "LanguageModel": {"proj_size": 0, "checkpoint_every": None, **_CELL_OPTIONS_BEFORE_VERSION_3,
                                              "embedding_dropout": 0.0, "tie_weights": False}}
META_KEY = "__lstmx__.json"


class CheckpointError(ValueError):
    """A file that is not a readable lstmx checkpoint (corrupt, truncated, foreign or inconsistent)."""


class Checkpoint(NamedTuple):
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays under ``prefix/`` with the prefix removed."""
        start = len(prefix) + 1
        return {k[start:]: v for k, v in self.arrays.items() if k.startswith(prefix + "/")}


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path`` and rename it into place.

    Temporary files that an earlier write of the same target left behind (a process killed mid-save) are
    removed first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def save(path: str | os.PathLike, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` and ``meta`` (JSON-able) atomically to ``path``."""
    payload = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    for name, value in payload.items():
        if value.dtype == object:
            raise TypeError(f"array {name!r} has dtype object, which cannot be saved without pickle")
    document = {"format": FORMAT, "version": VERSION, **meta, "arrays": _manifest(payload)}
    encoded = np.frombuffer(json.dumps(document).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda handle: np.savez(handle, **{META_KEY: encoded}, **payload))


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint; any problem is a :class:`CheckpointError` naming the file and the cause."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    # What a damaged zip can raise: a flipped header byte may name another compression method
    # (NotImplementedError, zlib.error), mark the member encrypted (RuntimeError) or break a length or CRC.
    unreadable = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
                  zlib.error)
    try:
        archive = np.load(source, allow_pickle=False)
    except unreadable as error:
        raise CheckpointError(f"{source} is not a readable lstmx checkpoint (corrupt or truncated: {error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{source} is not an lstmx checkpoint (a single .npy array, not an .npz archive)")
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files}  # reads every member: CRCs are checked
    except unreadable as error:
        raise CheckpointError(f"{source} is not a readable lstmx checkpoint (corrupt or truncated: {error})") from None
    if META_KEY not in arrays:
        raise CheckpointError(f"{source} is not an lstmx checkpoint (no {META_KEY} record; a foreign .npz file?)")
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{source}: its metadata is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not an lstmx checkpoint (format tag {meta.get('format') if isinstance(meta, dict) else None!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"{source} has checkpoint version {meta.get('version')!r}; this lstmx reads up to {VERSION}")
    listed = meta.pop("arrays", None)
    if listed is not None and listed != _manifest(arrays):
        missing, unexpected = sorted(set(listed) - set(arrays)), sorted(set(arrays) - set(listed))
        raise CheckpointError(f"{source} is corrupt: its arrays do not match its manifest (missing {missing}, "
                              f"unexpected {unexpected}, or a shape or dtype differs)")
    return Checkpoint(meta, arrays)


def _manifest(arrays: Mapping[str, np.ndarray]) -> dict[str, list]:
    return {name: [list(value.shape), value.dtype.str] for name, value in arrays.items()}


def model_meta(model: Any) -> dict[str, Any]:
    return {"class": type(model).__name__, "config": model.config(), "dtype": model.dtype_name, "seed": model.seed}


def model_from_checkpoint(checkpoint: Checkpoint, backend: Any = "numpy") -> Any:
    """Rebuild the model a checkpoint describes on ``backend`` and load its parameters."""
    from ..nn.models import LSTM, LanguageModel

    classes = {"LSTM": LSTM, "LanguageModel": LanguageModel}
    described = checkpoint.meta.get("model")
    if not isinstance(described, dict) or described.get("class") not in classes:
        raise CheckpointError(f"checkpoint describes no known model (got {described!r})")
    try:
        model = classes[described["class"]](**model_config(checkpoint.meta), backend=backend,
                                            dtype=described["dtype"], seed=described.get("seed", 0))
        model.load_state_dict(checkpoint.group("params"))
    except (TypeError, KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint parameters do not fit its model config: {error}") from None
    return model


def model_config(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The model's constructor arguments a checkpoint's metadata records, in this version's terms: a file of
    version 1 or 2 gets the options its models did not have, at the values they had then."""
    described = meta["model"]
    config = dict(described["config"])
    if meta.get("version", 1) < 3:
        config = {**OPTIONS_BEFORE_VERSION_3.get(described["class"], {}), **config}
    return config


def save_model(path: str | os.PathLike, model: Any, vocab: Any = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Save a model (and optionally its vocabulary) alone, without training state."""
    meta = {"model": model_meta(model), "vocab": None if vocab is None else vocab.to_config(), **(extra or {})}
    return save(path, meta, {f"params/{k}": v for k, v in model.state_dict().items()})


def load_model(path: str | os.PathLike, backend: Any = "numpy") -> tuple[Any, Any]:
    """``(model, vocab or None)`` from a checkpoint file."""
    from .data import vocab_from_config

    checkpoint = load(path)
    model = model_from_checkpoint(checkpoint, backend)
    vocab = checkpoint.meta.get("vocab")
    return model, (None if vocab is None else vocab_from_config(vocab))
