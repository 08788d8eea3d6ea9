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

// σ(z) as activate() computes it.
__device__ __forceinline__ $real sigmoid_of(const $real z)
{
    const $real half = 0.5;
    return half * $tanh(half * z) + half;
}

// z clipped to [-clip, clip] (clip = 0: no clipping); inside is 1 where z lay within, else 0.
__device__ __forceinline__ $real clip_gate(const $real z, const $real clip, $real& inside)
{
    inside = 1;
    if (clip == ($real)0) return z;
    const bool within = z >= -clip && z <= clip;
    if (!within) inside = 0;
    return within ? z : (z < 0 ? -clip : clip);
}

// The cell options of one unit (lstmx.nn.cells.LSTMCell's): its peepholes p_i, p_f, p_o (read only with
// peepholes), the clip of every pre-activation (0: none), the coupled input-forget gate f = 1 - i.
struct UnitOptions {
    $real p_i, p_f, p_o, clip;
    int input_forget;
    bool peepholes;
};

struct VariantOut {
    Gates a;          // activated (f = 1 - i with input_forget)
    $real inside[4];  // 1 where each pre-activation lay within the clip, else 0
    $real c_new, tanh_c, y, h, c;  // c'_t, tanh(c'_t), the output, the carried state (after zoneout and the mask)
};

// One step of the cell with options from the pre-activations z (bias and both products in), the carried c and
// h, zoneout's kc, kh (a training mask's 0 or 1, or the expectation in evaluation; 0: none) and the step mask m
// (1 without one).
__device__ __forceinline__ VariantOut variant_cell_forward(const $real zi, const $real zf, const $real zg,
                                                           const $real zo, const $real c_prev, const $real h_prev,
                                                           const UnitOptions& u, const $real kc, const $real kh,
                                                           const $real m)
{
    const $real one = 1;
    VariantOut out;
    const $real i = sigmoid_of(clip_gate(u.peepholes ? zi + u.p_i * c_prev : zi, u.clip, out.inside[0]));
    const $real f_open = sigmoid_of(clip_gate(u.peepholes ? zf + u.p_f * c_prev : zf, u.clip, out.inside[1]));
    const $real f = u.input_forget ? one - i : f_open;
    const $real g = $tanh(clip_gate(zg, u.clip, out.inside[2]));
    const $real c = f * c_prev + i * g;
    const $real o = sigmoid_of(clip_gate(u.peepholes ? zo + u.p_o * c : zo, u.clip, out.inside[3]));
    const $real tc = $tanh(c);
    $real h = o * tc, c_out = c;
    if (kc != ($real)0) c_out = kc * c_prev + (one - kc) * c;
    if (kh != ($real)0) h = kh * h_prev + (one - kh) * h;
    out.a = Gates{i, f, g, o};
    out.c_new = c; out.tanh_c = tc;
    out.y = m * h; out.h = m * h + (one - m) * h_prev; out.c = m * c_out + (one - m) * c_prev;
    return out;
}

struct VariantGrad {
    $real dz_i, dz_f, dz_g, dz_o, dc_prev;  // dL/d(pre-activations), dL/dc_{t-1}
    $real dh_carried;  // the share of dL/dh_{t-1} that does not go through W_h (zoneout's and padding's)
};

// The mirror of variant_cell_forward: from dy_t and dL/dh_t, dL/dc_t arriving from step t + 1 (dh_next: both
// shares, through W_h and carried), with σ' and tanh' from the stored outputs and the clip's inside values.
__device__ __forceinline__ VariantGrad variant_cell_backward(const Gates& a, const $real tc, const $real c_prev,
                                                             const $real dy, const $real dh_next, const $real dc_next,
                                                             const UnitOptions& u, const $real (&inside)[4],
                                                             const $real kc, const $real kh, const $real m)
{
    const $real one = 1;
    const $real dh = (one - kh) * m * (dy + dh_next);
    const $real dzo = dh * tc * a.o * (one - a.o) * inside[3];
    const $real dc_t = m * dc_next;
    $real dc_cell = (one - kc) * dc_t + dh * a.o * (one - tc * tc);
    if (u.peepholes) dc_cell += dzo * u.p_o;
    $real di = dc_cell * a.g, df = dc_cell * c_prev;
    const $real dg = dc_cell * a.i;
    if (u.input_forget) {  // f = 1 - i: the forget gate's gradient reaches i with a minus sign
        di -= df;
        df = 0;
    }
    const $real dzi = di * a.i * (one - a.i) * inside[0], dzf = df * a.f * (one - a.f) * inside[1];
    const $real dzg = dg * (one - a.g * a.g) * inside[2];
    $real dc_prev = dc_cell * a.f + kc * dc_t + (one - m) * dc_next;
    if (u.peepholes) dc_prev += dzi * u.p_i + dzf * u.p_f;
    return VariantGrad{dzi, dzf, dzg, dzo, dc_prev, kh * m * (dy + dh_next) + (one - m) * dh_next};
}
