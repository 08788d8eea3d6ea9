"""Time the persistent CuPy path's forward + backward for several block shapes (rows per block), GPU only.

    python bench/tune_persistent.py            # prints ms per training step for each rows value and size
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser  # noqa: E402

import lstmx  # noqa: E402
from lstmx.dispatch import registry  # noqa: E402


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.parse_args()  # no options: anything given is refused in one line
    try:
        backend = lstmx.get_backend("cupy")
    except lstmx.BackendError as error:
        parser.exit(2, f"{parser.prog}: error: needs a GPU: {error}\n")
    import cupy

    from lstmx.kernels.cupy import shell  # imports CuPy's libraries: only once a GPU is known to be there

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
            if rows == 4:  # where the time goes: forward and backward separately, and the kernels alone (events)
                start, end = cupy.cuda.Event(), cupy.cuda.Event()
                split = {"forward": [], "backward": [], "forward kernel": [], "backward kernel": []}
                for repeat in range(10):
                    cupy.cuda.Stream.null.synchronize()
                    t0 = time.perf_counter()
                    _, _, cache = model.forward(x, impl="cupy-persistent")
                    cupy.cuda.Stream.null.synchronize()
                    t1 = time.perf_counter()
                    model.backward(dy, cache)
                    cupy.cuda.Stream.null.synchronize()
                    split["forward"].append(t1 - t0)
                    split["backward"].append(time.perf_counter() - t1)
                    layer = cache.layers[0]
                    w, b = model.params["weight_l0"], model.params["bias_l0"]
                    h0 = cupy.zeros((batch, hidden), dtype=model.dtype)
                    buffers = shell.forward_buffers(x, w, b, h0, h0, None, (steps, batch, features, hidden))
                    start.record()
                    module._launch("lstm_forward_persistent", "float32", batch, hidden,
                                   (buffers.gates, w[features:], b, buffers.cells, buffers.hidden_states, buffers.tanh_c,
                                    buffers.y, shell.NULL, np.int32(steps), np.int32(batch), np.int32(hidden)))
                    end.record()
                    end.synchronize()
                    split["forward kernel"].append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
                    dz = cupy.empty_like(layer.gates)
                    dh, dc = cupy.zeros_like(h0), cupy.zeros_like(h0)
                    start.record()
                    module._launch("lstm_backward_persistent", "float32", batch, hidden,
                                   (dy, w[features:], layer.gates, layer.cells, layer.tanh_c, shell.NULL, dz, dh, dc,
                                    np.int32(steps), np.int32(batch), np.int32(hidden)))
                    end.record()
                    end.synchronize()
                    split["backward kernel"].append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
                line.append(", ".join(f"{k} {1e3 * np.median(v[2:]):.2f}" for k, v in split.items()))
        print((batch, steps, features, hidden), "; ".join(line), flush=True)


if __name__ == "__main__":
    main()
