"""Max error of each output of the persistent path against the generic one over a grid of sizes (GPU only)."""
import numpy as np
import lstmx
from lstmx import registry
from lstmx.backend import to_numpy
from lstmx.layers import lstm_layer as generic

backend = lstmx.get_backend("cupy")
module = registry.layer_impl("cupy-persistent").load()
for dtype in ("float32", "float64"):
    for batch, hidden in [(2, 32), (2, 64), (2, 96), (2, 128), (2, 160), (2, 192), (2, 256), (16, 128), (9, 70)]:
        if module.refuses_size(batch, hidden, dtype):
            print(dtype, batch, hidden, "refused:", module.refuses_size(batch, hidden, dtype)); continue
        rng = np.random.default_rng(0)
        steps, features = 3, 3
        x = rng.standard_normal((steps, batch, features)); w = rng.standard_normal((features + hidden, 4 * hidden)) / np.sqrt(hidden)
        b = 0.3 * rng.standard_normal(4 * hidden); h0 = rng.standard_normal((batch, hidden)); c0 = rng.standard_normal((batch, hidden))
        dy = rng.standard_normal((steps, batch, hidden)); dh = rng.standard_normal((batch, hidden)); dc = rng.standard_normal((batch, hidden))
        a = [backend.asarray(v, dtype=getattr(backend.xp, dtype)) for v in (x, w, b, h0, c0, dy, dh, dc)]
        out = []
        for m in (module, generic):
            y, (h, c), cache = m.lstm_layer_forward(backend, *a[:5])
            dx, (dh0, dc0), dw, db = m.lstm_layer_backward(backend, a[5], a[6], a[7], a[1], cache)
            out.append([to_numpy(v) for v in (y, h, c, dx, dh0, dc0, dw, db)])
        errs = {n: float(np.max(np.abs(p - q))) for n, p, q in zip("y h c dx dh0 dc0 dw db".split(), *out)}
        print(dtype, batch, hidden, " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
