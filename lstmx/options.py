"""Options of a training run, declared once: default, one line of help, allowed range or choices.

:class:`lstmx.training.loop.TrainConfig` and the option groups below are dataclasses whose fields carry this metadata.
The library checks a config with :func:`check_config` (one line naming the field and its range), and the
command line (:mod:`lstmx.cli`) generates its flags, their help and defaults from the same fields, so the two
never disagree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence


class OptionError(ValueError):
    """A configuration value outside its allowed range."""


class Range(NamedTuple):
    """Allowed values of a number: bounds (None: unbounded), whether each bound is allowed, integer or real."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            return f"{kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'≥' if self.low_inclusive else '>'} {_number(self.low)}"
        if self.high is not None:
            return f"{kind} {'≤' if self.high_inclusive else '<'} {_number(self.high)}"
        return kind

    def check(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else what is wrong with it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not float(value).is_integer()):
            return f"must be {self.describe()}, got {value!r}"
        if not math.isfinite(value):
            return f"must be {self.describe()}, got {value!r}"
        too_low = self.low is not None and (value < self.low if self.low_inclusive else value <= self.low)
        too_high = self.high is not None and (value > self.high if self.high_inclusive else value >= self.high)
        if too_low or too_high:
            return f"must be {self.describe()}, got {_number(value)}"
        return None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_inclusive=False)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_inclusive=False)  # [0, 1)


class Spec(NamedTuple):
    """What a field's metadata says about it."""

    help: str
    range: Range | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    optional: bool = False  # None is allowed (meaning: off, or the library's own default)
    on_resume: str = "refuse"  # "refuse": must match the checkpoint; "override": may change when resuming

    def allowed(self) -> Sequence[str] | None:
        return self.choices() if callable(self.choices) else self.choices


def option(default: Any, help: str, range: Range | None = None, choices: Any = None, optional: bool = False,
           on_resume: str = "refuse") -> Any:
    """A dataclass field with its :class:`Spec`."""
    return dataclasses.field(default=default, metadata={"spec": Spec(help, range, choices, optional, on_resume)})


def spec_of(field: dataclasses.Field) -> Spec:
    return field.metadata["spec"]


def check_value(name: str, value: Any, spec: Spec) -> str | None:
    """None when ``value`` is allowed for the option, else a message naming it (as ``name``)."""
    if value is None and spec.optional:
        return None
    allowed = spec.allowed()
    if allowed is not None:
        if value not in allowed:
            return f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}"
        return None
    if spec.range is not None:
        problem = spec.range.check(value)
        return None if problem is None else f"{name} {problem}"
    return None


def check_arguments(**values: tuple[Any, Range]) -> None:
    """Raise :class:`OptionError` naming the first argument (``name=(value, range)``) outside its range."""
    for name, (value, allowed) in values.items():
        problem = allowed.check(value)
        if problem is not None:
            raise OptionError(f"{name} {problem}")


def check_config(config: Any) -> None:
    """Raise :class:`OptionError` naming the first field of ``config`` outside its allowed values."""
    for field in dataclasses.fields(config):
        problem = check_value(field.name, getattr(config, field.name), spec_of(field))
        if problem is not None:
            raise OptionError(problem)


@dataclasses.dataclass
class DataConfig:
    """How text becomes training data (saved in checkpoints, so a resumed run reads its data the same way)."""

    level: str = option("char", "tokens: characters or words", choices=("char", "word"))
    unk: bool = option(False, "word level: map words seen fewer than --min-count times to <unk>")
    min_count: int = option(1, "word level: fewest occurrences for a word to get its own token", POSITIVE_INT)
    max_chars: int = option(1_000_000, "use at most this many characters of the text", POSITIVE_INT)
    validation: float = option(0.1, "fraction of the tokens held out for validation", FRACTION)
    test: float = option(0.0, "fraction held out for a final test evaluation", FRACTION)


@dataclasses.dataclass
class ModelConfig:
    """The language model's shape."""

    embedding_size: int = option(64, "embedding width E", POSITIVE_INT)
    hidden_size: int = option(256, "LSTM hidden size H", POSITIVE_INT)
    num_layers: int = option(1, "stacked LSTM layers", POSITIVE_INT)
    proj_size: int = option(0, "LSTM projection width P, below the hidden size (0: no projection)", NON_NEGATIVE_INT)
    peepholes: bool = option(False, "peephole connections: i and f see c_{t-1}, o sees c_t (ONNX's P)")
    input_forget: bool = option(False, "couple the forget gate to the input gate: f = 1 - i (ONNX's input_forget)")
    cell_clip: float | None = option(None, "clip every gate's pre-activation to [-C, C] (ONNX's clip)", POSITIVE,
                                     optional=True)
    layer_norm: bool = option(False, "layer-normalised LSTM (Ba et al. 2016): LN on x W_x, on h W_h and on c before "
                                     "its tanh")
    zoneout: float = option(0.0, "zoneout (Krueger et al. 2017): each unit of c and h keeps its previous value with "
                                 "this probability in training (its expectation in evaluation)", FRACTION)
    recurrent_dropout: float = option(0.0, "variational dropout on h_{t-1}, one mask per sequence (Keras's "
                                           "recurrent_dropout)", FRACTION)
    weight_drop: float = option(0.0, "DropConnect on the recurrent weights W_h, one mask per forward (AWD-LSTM)",
                                FRACTION)
    locked_dropout: bool = option(False, "dropout with one mask per sequence, the same at every step (AWD-LSTM)")
    embedding_dropout: float = option(0.0, "drop whole tokens of the embedding, one mask per forward (AWD-LSTM)",
                                      FRACTION)
    tie_weights: bool = option(False, "the output layer multiplies by the embedding's transpose (needs "
                                      "--embedding-size = --proj-size or --hidden-size)")
    checkpoint_every: int | None = option(None, "keep the LSTM state every K steps and recompute the rest in the "
                                                "backward (memory O(T/K + K) instead of O(T); exact gradients)",
                                          POSITIVE_INT, optional=True)
    dropout: float = option(0.0, "dropout between layers and before the head (training only)", FRACTION)
    dtype: str = option("float32", "parameter and activation dtype", choices=("float32", "float64"))
