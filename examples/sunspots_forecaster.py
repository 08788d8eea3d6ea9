"""A time-series forecaster: an LSTM reads the yearly sunspot numbers that statsmodels ships (1700-2008) and
predicts next year's number; trained on the years up to 1958, evaluated one step ahead on 1959-2008.

    python examples/sunspots_forecaster.py        # about 20 s on 2 CPU cores

Prints the test mean absolute error against the last-value baseline (next year = this year), and exits 1 if it
does not beat it.
"""

from __future__ import annotations

import sys

import numpy as np
import statsmodels.api as sm

import lstmx
from lstmx.nn.layers import linear_backward, linear_forward
from lstmx.training.optim import Adam, clip_grad_norm

HIDDEN, WINDOW, STEPS, TEST_YEARS = 32, 20, 1500, 50


def main() -> int:
    series = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    scale = series[:-TEST_YEARS].std()
    values = (series / scale).astype(np.float32)  # scaled by the training years' spread
    lstm = lstmx.LSTM(1, HIDDEN, seed=0)
    backend = lstm.backend
    rng = np.random.default_rng(0)
    params = {**lstm.params, "head.weight": rng.uniform(-0.1, 0.1, (HIDDEN, 1)).astype(np.float32),
              "head.bias": np.zeros(1, dtype=np.float32)}

    class Parameters:  # what the optimizer updates: the LSTM's and the head's arrays
        pass

    holder = Parameters()
    holder.params, holder.backend = params, backend
    optimizer = Adam(holder, lr=5e-3)

    def predict(windows: np.ndarray):
        """windows (T, B) → the prediction after every step (T, B), and what backward needs."""
        lstm.params = {name: holder.params[name] for name in lstm.params}  # a step replaced the arrays
        y, _, cache = lstm.forward(windows[..., None])
        out, head_cache = linear_forward(backend, y, holder.params["head.weight"], holder.params["head.bias"])
        return out[..., 0], (cache, head_cache)

    train = values[: len(values) - TEST_YEARS]
    starts = np.arange(len(train) - WINDOW - 1)
    for _ in range(STEPS):
        batch = rng.choice(starts, 32)
        windows = np.stack([train[s:s + WINDOW] for s in batch], axis=1)  # (T, B)
        targets = np.stack([train[s + 1:s + WINDOW + 1] for s in batch], axis=1)
        prediction, (cache, head_cache) = predict(windows)
        dprediction = 2 * (prediction - targets) / prediction.size  # mean squared error
        dy, dweight, dbias = linear_backward(backend, dprediction[..., None], holder.params["head.weight"], head_cache)
        _, _, grads = lstm.backward(dy, cache)
        grads, _ = clip_grad_norm(backend, {**grads, "head.weight": dweight, "head.bias": dbias}, 1.0)
        optimizer.step(grads)

    # one step ahead over the test years: each prediction reads the WINDOW years before it
    first = len(values) - TEST_YEARS
    windows = np.stack([values[t - WINDOW:t] for t in range(first, len(values))], axis=1)
    prediction, _ = predict(windows)
    forecast = prediction[-1] * scale
    truth = series[first:]
    mae = float(np.mean(np.abs(forecast - truth)))
    last_value = float(np.mean(np.abs(series[first - 1:-1] - truth)))
    print(f"LSTM sunspot forecaster: test MAE {mae:.1f} sunspots (last-value baseline {last_value:.1f}) over "
          f"{TEST_YEARS} years")
    return 0 if mae < last_value else 1


if __name__ == "__main__":
    sys.exit(main())
