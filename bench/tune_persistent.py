"""Time the persistent CuPy path's forward + backward for several block shapes (rows per block), GPU only.

    python bench/tune_persistent.py            # prints ms per training step for each rows value and size
"""
import time

import numpy as np

import lstmx
from lstmx import registry

backend = lstmx.get_backend("cupy")
import cupy  # noqa: E402

module = registry.layer_impl("cupy-persistent").load()
for batch, steps, features, hidden in [(16, 200, 128, 128), (64, 100, 256, 256), (32, 100, 64, 256)]:
    model = lstmx.LSTM(features, hidden, backend="cupy", seed=0)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((steps, batch, features)), dtype=model.dtype)
    dy = backend.asarray(rng.standard_normal((steps, batch, hidden)), dtype=model.dtype)
    line = []
    for rows in (2, 4, 8, 16):
        module.ROWS = rows
        module._resident_blocks.cache_clear()
        if module.refuses_size(batch, hidden, np.float32):
            line.append(f"rows {rows}: refused")
            continue
        times = []
        for repeat in range(12):
            cupy.cuda.Stream.null.synchronize()
            start = time.perf_counter()
            _, _, cache = model.forward(x, impl="cupy-persistent")
            model.backward(dy, cache)
            cupy.cuda.Stream.null.synchronize()
            times.append(time.perf_counter() - start)
        line.append(f"rows {rows}: {1e3 * np.median(times[2:]):.2f} ms")
    print((batch, steps, features, hidden), "; ".join(line), flush=True)
