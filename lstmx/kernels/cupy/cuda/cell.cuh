// The LSTM cell of the layer kernels (included before stepwise.cu, persistent.cu and tiled.cu).
// A Python string.Template, filled in per variant by lstmx.kernels.cupy.cuda_sources.source: its dollar-prefixed
// names (real: float or double; suffix: the variant's name, which ends every kernel's name; ...) are listed there.

// The LSTM cell every kernel here computes for one unit of one row (the equations: lstmx.nn.layers.cell).
struct Gates {
    $real i, f, g, o;  // pre-activations on the way into activate(), activations after
};

// σ(z) = ½·tanh(½z) + ½, as in the generic path.
__device__ __forceinline__ Gates activate(const $real zi, const $real zf, const $real zg, const $real zo)
{
    const $real half = 0.5;
    return Gates{half * $tanh(half * zi) + half, half * $tanh(half * zf) + half, $tanh(zg),
                 half * $tanh(half * zo) + half};
}

struct CellOut {
    $real tanh_c, y, h, c;  // tanh of the new cell value, the output, the carried state
};

// One step of the cell. With a step mask m (1 on a real step, 0 on padding) a padded row outputs 0 and carries
// its state; without one (masked = false) h_prev is not read.
__device__ __forceinline__ CellOut cell_forward(const Gates& a, const $real c_prev, const $real h_prev,
                                                const bool masked, const $real m)
{
    const $real one = 1;
    const $real c = a.f * c_prev + a.i * a.g, tc = $tanh(c), h = a.o * tc;
    if (!masked) return CellOut{tc, h, h, c};
    return CellOut{tc, m * h, m * h + (one - m) * h_prev, m * c + (one - m) * c_prev};
}

struct CellGrad {
    $real dz_i, dz_f, dz_g, dz_o, dc_prev;  // dL/d(pre-activations) and dL/dc_{t-1}
};

// The mirror of cell_forward: from dy_t and dL/dh_t, dL/dc_t arriving from step t + 1, with σ' and tanh' from
// the stored outputs (a: activated gates, tc: tanh(c_t)). m = 1 without a mask.
__device__ __forceinline__ CellGrad cell_backward(const Gates& a, const $real tc, const $real c_prev, const $real dy,
                                                  const $real dh_next, const $real dc_next, const $real m)
{
    const $real one = 1;
    const $real dh_t = m * (dy + dh_next);
    const $real dc_t = m * dc_next + dh_t * a.o * (one - tc * tc);
    return CellGrad{dc_t * a.g * a.i * (one - a.i), dc_t * c_prev * a.f * (one - a.f), dc_t * a.i * (one - a.g * a.g),
                    dh_t * tc * a.o * (one - a.o), dc_t * a.f + (one - m) * dc_next};
}
