"""Optimizers, gradient clipping and learning-rate schedules, on any Array API backend.

Each optimizer keeps its state (moments, momentum buffers) on the model's backend as arrays keyed by parameter
name, updates ``model.params`` in place, and round-trips through :meth:`Optimizer.state_dict` /
:meth:`Optimizer.load_state_dict` (host NumPy arrays plus JSON-able numbers). The update rules follow
PyTorch's ``torch.optim`` so the same hyper-parameters mean the same thing.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from ..backend import Backend, to_numpy
from ..dispatch import registry
from ..options import NON_NEGATIVE, POSITIVE, POSITIVE_INT, OptionError, Range
from ..options import check_arguments as _check

UNIT = Range(0, 1, high_inclusive=False)  # [0, 1)

Schedule = Callable[[int], float]  # step (0-based) → learning rate


# --- Learning-rate schedules -------------------------------------------------------------------------------

def constant(lr: float) -> Schedule:
    _check(lr=(lr, POSITIVE))
    return lambda step: lr


def step_decay(lr: float, step_size: int, gamma: float = 0.5) -> Schedule:
    """``lr · gamma^(step // step_size)``."""
    _check(lr=(lr, POSITIVE), step_size=(step_size, POSITIVE_INT), gamma=(gamma, POSITIVE))
    return lambda step: lr * gamma ** (step // step_size)


def exponential_decay(lr: float, gamma: float) -> Schedule:
    """``lr · gamma^step``."""
    _check(lr=(lr, POSITIVE), gamma=(gamma, POSITIVE))
    return lambda step: lr * gamma**step


def warmup_cosine(lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> Schedule:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""
    _check(lr=(lr, POSITIVE), total_steps=(total_steps, POSITIVE_INT), warmup_steps=(warmup_steps, Range(0, integer=True)),
           min_lr=(min_lr, NON_NEGATIVE))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))

    return schedule


SCHEDULES = ("constant", "step", "exponential", "cosine")


def make_schedule(name: str, lr: float, total_steps: int, warmup_steps: int = 0, gamma: float = 0.5,
                  step_size: int = 1000, min_lr: float = 0.0) -> Schedule:
    """A schedule by name: ``constant``, ``step``, ``exponential`` or ``cosine`` (with warm-up)."""
    if name == "constant":
        return constant(lr)
    if name == "step":
        return step_decay(lr, step_size, gamma)
    if name == "exponential":
        return exponential_decay(lr, gamma)
    if name == "cosine":
        return warmup_cosine(lr, total_steps, warmup_steps, min_lr)
    raise ValueError(f"unknown schedule {name!r}; expected constant, step, exponential or cosine")


# --- Gradient clipping ---------------------------------------------------------------------------------------

def global_norm(backend: Backend, grads: Mapping[str, Any]) -> Any:
    """‖g‖₂ over all gradients together, as a 0-d array (no host sync)."""
    xp = backend.xp
    return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))


def clip_grad_norm(backend: Backend, grads: Mapping[str, Any], max_norm: float,
                   impl: str | None = None) -> tuple[dict[str, Any], Any]:
    """Scale all gradients by ``min(1, max_norm / ‖g‖)``; returns the clipped gradients (new arrays) and the norm
    before, a 0-d array (no host sync). ``impl`` names the update implementation whose clipping runs
    (:func:`lstmx.dispatch.registry.choose_clipping`; a trainer passes its optimizer's ``impl``)."""
    _check(max_norm=(max_norm, POSITIVE))
    _, clip = registry.choose_clipping(backend, impl)
    return clip(backend, dict(grads), float(max_norm))


def clip_by_global_norm(backend: Backend, grads: dict[str, Any], max_norm: float) -> tuple[dict[str, Any], Any]:
    """The generic clipping behind :func:`clip_grad_norm` (checked arguments)."""
    xp = backend.xp
    norm = global_norm(backend, grads)
    scale = xp.minimum(max_norm / (norm + 1e-6), xp.ones_like(norm))
    return {name: g * scale for name, g in grads.items()}, norm


def clip_grad_value(backend: Backend, grads: Mapping[str, Any], clip: float) -> dict[str, Any]:
    """Clip every gradient entry into ``[-clip, clip]``."""
    _check(clip=(clip, POSITIVE))
    return {name: backend.xp.clip(g, -clip, clip) for name, g in grads.items()}


# --- Optimizers ----------------------------------------------------------------------------------------------

class Optimizer:
    """Base class: holds the model, the schedule, the step count and per-parameter state slots."""

    slots: tuple[str, ...] = ()

    def __init__(self, model: Any, lr: float | Schedule, weight_decay: float = 0.0, impl: str | None = None) -> None:
        if not callable(lr):
            _check(lr=(lr, POSITIVE))
        _check(weight_decay=(weight_decay, NON_NEGATIVE))
        self.model = model
        self.schedule: Schedule = lr if callable(lr) else constant(float(lr))
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        xp, device = model.backend.xp, model.backend.device
        self.state = {
            name: {slot: xp.zeros(p.shape, dtype=p.dtype, device=device) for slot in self.slots}
            for name, p in model.params.items()
        }
        self.requested_impl = impl
        self.impl, self._update = registry.choose_update(model.backend, type(self), impl)

    @property
    def lr(self) -> float:
        """The learning rate the next :meth:`step` will use (the schedule's value, checked: finite and > 0)."""
        value = self.schedule(self.step_count)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value) or value <= 0:
            raise OptionError(f"the learning-rate schedule gave {value!r} at step {self.step_count}; a learning "
                              "rate must be a finite number > 0")
        return float(value)

    def step(self, grads: Mapping[str, Any]) -> None:
        """Apply one update to ``model.params`` from ``grads``: exactly the params' names, each of its parameter's
        shape and dtype, on the model's backend and device (checked here, in one line naming the parameter)."""
        self.check_grads(grads)
        lr = self.lr
        self.step_count += 1
        self.model.params.update(self._update(self, self.model.backend.xp, self.model.params, grads, self.state, lr))

    def check_grads(self, grads: Mapping[str, Any]) -> None:
        """Refuse gradients that do not fit the model's parameters (a shape that merely broadcasts, another dtype
        or backend would change the parameters silently)."""
        from ..backend import check_same_backend, dtype_name

        params = self.model.params
        missing, unexpected = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
        if missing or unexpected:
            raise KeyError(f"grads must have exactly the parameters' names: missing {missing}, unexpected {unexpected}")
        for name, param in params.items():
            grad = grads[name]
            check_same_backend(self.model.backend, f"grads[{name!r}]", grad)
            if tuple(grad.shape) != tuple(param.shape):
                raise ValueError(f"grads[{name!r}] has shape {tuple(grad.shape)}, expected the parameter's "
                                 f"{tuple(param.shape)}")
            if grad.dtype != param.dtype:
                raise TypeError(f"grads[{name!r}] has dtype {dtype_name(grad.dtype)}, expected the parameter's "
                                f"{dtype_name(param.dtype)}")

    def update(self, xp: Any, param: Any, grad: Any, state: dict[str, Any], lr: float) -> Any:
        """The generic update of one tensor: returns the new parameter and replaces ``state``'s slots
        (:func:`update_each` runs it on every tensor of a step)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay}

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, host arrays) describing the optimizer completely (schedule excepted)."""
        meta = {"type": type(self).__name__, "step": self.step_count, "hyperparameters": self.hyperparameters()}
        arrays = {f"{name}/{slot}": to_numpy(value) for name, slots in self.state.items() for slot, value in slots.items()}
        return meta, arrays

    def load_state_dict(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        if meta.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {meta.get('type')!r}, not {type(self).__name__}")
        backend = self.model.backend
        state = {}
        for name, param in self.model.params.items():
            state[name] = {}
            for slot in self.slots:
                key = f"{name}/{slot}"
                if key not in arrays or tuple(arrays[key].shape) != tuple(param.shape):
                    raise ValueError(f"optimizer state {key!r} is missing or has the wrong shape")
                state[name][slot] = backend.asarray(arrays[key], dtype=param.dtype)
        self.state = state
        self.step_count = int(meta["step"])

    def to(self, backend: Backend) -> "Optimizer":
        """Move the state to ``backend``, where the model must already be (call after ``model.to``)."""
        if backend.name != self.model.backend.name:
            raise ValueError(f"move the model to {backend.name!r} first; it is on {self.model.backend.name!r}")
        self.load_state_dict(*self.state_dict())  # through host memory, onto the model's backend
        self.impl, self._update = registry.choose_update(backend, type(self), self.requested_impl)
        return self


class SGD(Optimizer):
    """SGD with optional momentum (heavy-ball or Nesterov) and L2 weight decay, as ``torch.optim.SGD``."""

    def __init__(self, model: Any, lr: float | Schedule = 0.1, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, impl: str | None = None) -> None:
        _check(momentum=(momentum, UNIT))
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.slots = ("momentum",) if momentum else ()
        super().__init__(model, lr, weight_decay, impl)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}

    def update(self, xp, param, grad, state, lr):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            buffer = grad if self.step_count == 1 else self.momentum * state["momentum"] + grad
            state["momentum"] = buffer
            grad = grad + self.momentum * buffer if self.nesterov else buffer
        return param - lr * grad


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``); ``weight_decay`` is L2 added to the gradient. See :class:`AdamW`."""

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, model: Any, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, impl: str | None = None) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise OptionError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        _check(beta1=(betas[0], UNIT), beta2=(betas[1], UNIT), eps=(eps, POSITIVE))
        super().__init__(model, lr, weight_decay, impl)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}

    def update(self, xp, param, grad, state, lr):
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled:
            param = param * (1 - lr * self.weight_decay)
        elif self.weight_decay:
            grad = grad + self.weight_decay * param
        exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
        state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
        bias_correction1 = 1 - beta1**self.step_count
        bias_correction2 = 1 - beta2**self.step_count
        denominator = xp.sqrt(exp_avg_sq) / math.sqrt(bias_correction2) + self.eps
        return param - (lr / bias_correction1) * exp_avg / denominator


class AdamW(Adam):
    """Adam with decoupled weight decay (``torch.optim.AdamW``): ``p ← p·(1 − lr·wd)`` before the Adam step."""

    decoupled = True

    def __init__(self, model: Any, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, impl: str | None = None) -> None:
        super().__init__(model, lr, betas, eps, weight_decay, impl)


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``, uncentred): ``v ← αv + (1−α)g²``, ``p ← p − lr·g/(√v + ε)``."""

    def __init__(self, model: Any, lr: float | Schedule = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0, impl: str | None = None) -> None:
        _check(alpha=(alpha, UNIT), eps=(eps, POSITIVE), momentum=(momentum, UNIT))
        self.slots = ("square_avg", "momentum") if momentum else ("square_avg",)
        super().__init__(model, lr, weight_decay, impl)
        self.alpha, self.eps, self.momentum = float(alpha), float(eps), float(momentum)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum}

    def update(self, xp, param, grad, state, lr):
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        square_avg = self.alpha * state["square_avg"] + (1 - self.alpha) * grad * grad
        state["square_avg"] = square_avg
        step = grad / (xp.sqrt(square_avg) + self.eps)
        if self.momentum:
            step = self.momentum * state["momentum"] + step
            state["momentum"] = step
        return param - lr * step


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def update_each(optimizer: Optimizer, xp: Any, params: dict[str, Any], grads: Mapping[str, Any],
                states: dict[str, dict[str, Any]], lr: float) -> dict[str, Any]:
    """The generic step: every tensor in turn by ``optimizer.update``; returns the new parameters by name and
    replaces the slots of ``states[name]``. The registry may run a fast path with this signature instead
    (``optimizer.impl`` names the one chosen), which may take several tensors in one launch."""
    return {name: optimizer.update(xp, param, grads[name], states[name], lr) for name, param in params.items()}


UPDATES = {"Optimizer": update_each}  # for the registry: the generic step runs every optimizer, a user's subclass too


def make_optimizer(name: str, model: Any, lr: float | Schedule, **options: Any) -> Optimizer:
    """An optimizer by name (sgd, adam, adamw, rmsprop) with keyword options of its constructor."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}") from None
    return cls(model, lr, **options)
