"""Dynamic loss scaling, for training under ``precision="fp16"`` (:mod:`lstmx.dispatch.precision`).

Half precision holds nothing below 2**-24, and the gradients flowing into the backward's products lie far below
1 (a logit's is at most 1 / tokens of the batch), so they would vanish. The gradient therefore leaves the loss
multiplied by a scale S (:meth:`lstmx.nn.models.LanguageModel.loss`'s ``grad_scale``); the parameter gradients,
S times too large, are divided by S before clipping and the update. When a step's scaled gradients overflowed
(an infinity or NaN in any of them), that step's update is not kept and S halves; after GROWTH_INTERVAL steps in
a row without one, S doubles. PyTorch's ``torch.amp.GradScaler`` with its defaults, but every decision is made
on the device (``where``), so a step never waits for the host. A step not kept still counts as a step (the
learning-rate schedule and Adam's bias correction move on), where GradScaler skips the optimizer's step.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from ..backend import Backend

INITIAL_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000  # steps in a row without an overflow before the scale doubles
GROWTH, BACKOFF = 2.0, 0.5


class LossScale(NamedTuple):
    """The scale and the steps since the last overflow, as 0-d float32 arrays on the device."""

    scale: Any
    good_steps: Any

    @classmethod
    def start(cls, backend: Backend, scale: float = INITIAL_SCALE, good_steps: int = 0) -> "LossScale":
        return cls(backend.asarray(scale, dtype=backend.xp.float32), backend.asarray(good_steps,
                                                                                     dtype=backend.xp.float32))

    def after(self, backend: Backend, finite: Any) -> "LossScale":
        """The state after a step whose gradients were all finite (``finite``, a 0-d bool) or not."""
        xp = backend.xp
        good = xp.where(finite, self.good_steps + 1, xp.zeros_like(self.good_steps))
        grown = good >= GROWTH_INTERVAL
        scale = xp.where(finite, xp.where(grown, self.scale * GROWTH, self.scale), self.scale * BACKOFF)
        return LossScale(scale, xp.where(grown, xp.zeros_like(good), good))

    def to_host(self) -> dict[str, float]:
        """For a checkpoint (one read of two numbers, at a checkpoint only)."""
        from ..backend import to_numpy

        return {"scale": float(to_numpy(self.scale)), "good_steps": int(to_numpy(self.good_steps))}


def unscaled(backend: Backend, grads: Mapping[str, Any], loss_scale: LossScale) -> tuple[dict[str, Any], Any]:
    """``(grads / scale, finite)``: ``finite`` a 0-d bool, whether every scaled gradient was finite; where one
    was not, every gradient comes back zero (so clipping and the gradient norm stay finite)."""
    xp = backend.xp
    finite = None
    for grad in grads.values():
        each = xp.all(xp.isfinite(grad))
        finite = each if finite is None else xp.logical_and(finite, each)
    inverse = 1.0 / loss_scale.scale
    return ({name: xp.where(finite, grad * inverse, xp.zeros_like(grad)) for name, grad in grads.items()},
            finite)


def copies(backend: Backend, arrays: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of ``arrays`` (an update may write into its arrays in place)."""
    return {name: backend.xp.asarray(value, copy=True) for name, value in arrays.items()}


def kept(backend: Backend, finite: Any, after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """``after`` where ``finite``, else ``before``: an update kept or undone, on the device."""
    return {name: backend.xp.where(finite, value, before[name]) for name, value in after.items()}
