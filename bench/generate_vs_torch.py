"""Text generation, tokens per second: lstmx's sampler (``lstmx.nn.sample.generate``) against PyTorch's own token
loop on the same model (the README's: E 64, H 256, V 96), with 1 and with N samples per call, in one run (the
two take turns).

    python bench/generate_vs_torch.py                   # 1 and 64 samples, 300 tokens each
    python bench/generate_vs_torch.py --tokens 100 --samples 1 8
    python bench/generate_vs_torch.py --backend cupy --impl cupy-fused   # on the GPU, against PyTorch on CUDA

The lstmx column runs the token loop the registry picks (``lstmx.dispatch.registry.choose_generation``: the compiled
Numba loop where Numba is installed), the lstmx-generic column the reference loop (the model's inference forward
per token). Each draws every token from the softmax of the last logits (temperature 1); PyTorch runs under ``torch.inference_mode()``. Also reports the GFLOP/s the tokens amount to (a token of
one sample is ~2 · (E + H) · 4H + 2 · H · V multiply-adds). ``--backend cupy`` puts the model on the GPU (and
PyTorch's on CUDA, its draw on the host as lstmx's generic loop draws); ``--impl`` names lstmx's token loop.
Writes bench/results/generate_vs_torch.json (generate_vs_torch_cupy.json with ``--backend cupy``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, machine_report, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.backend import BackendError  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.dispatch.registry import ImplError  # noqa: E402
from lstmx.training.data import CharVocab  # noqa: E402
from lstmx.interop import language_model_to_torch  # noqa: E402
from lstmx.options import POSITIVE_INT  # noqa: E402
from lstmx.nn.sample import generate  # noqa: E402

VOCAB, EMBEDDING, HIDDEN = 96, 64, 256


def lstmx_run(model, vocab, tokens: int, samples: int, impl: str | None = None) -> float:
    start = time.perf_counter()
    for _ in generate(model, vocab, "def ", tokens, temperature=1.0, seed=0, num_samples=samples, impl=impl):
        pass
    return time.perf_counter() - start


def torch_run(torch, net, prime: list[int], tokens: int, samples: int, device: str) -> float:
    embedding, lstm, head = net
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with torch.inference_mode():
        x = torch.tensor(prime, dtype=torch.int64, device=device)[:, None].repeat(1, samples)
        y, state = lstm(embedding(x))
        logits = head(y[-1])
        for _ in range(tokens):
            probabilities = torch.softmax(logits.double(), dim=-1).cpu().numpy()
            drawn = [int(rng.choice(VOCAB, p=row / row.sum())) for row in probabilities]
            y, state = lstm(embedding(torch.tensor([drawn], dtype=torch.int64, device=device)), state)
            logits = head(y[-1])
    return time.perf_counter() - start


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--tokens", type=flag_type("--tokens", POSITIVE_INT, int), default=300,
                        help="tokens generated per sample")
    parser.add_argument("--samples", type=flag_type("--samples", POSITIVE_INT, int), nargs="+", default=[1, 64],
                        help="samples per call (one row each)")
    parser.add_argument("--rounds", type=flag_type("--rounds", POSITIVE_INT, int), default=3,
                        help="turns each column takes")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"], help="where lstmx's model lives")
    parser.add_argument("--impl", default=None, choices=[impl.name for impl in lstmx.dispatch.registry.GENERATION_IMPLS],
                        help="lstmx's token loop (default: the registry's choice)")
    args = parser.parse_args()
    machine = machine_report()
    symbols = [chr(32 + k) for k in range(VOCAB - 1)] + ["\n"]
    vocab = CharVocab(symbols)
    try:
        model = lstmx.LanguageModel(VOCAB, EMBEDDING, HIDDEN, seed=0, backend=args.backend)
        machine["lstmx_generation_impl"] = lstmx.dispatch.registry.choose_generation(model, args.impl)[0]
    except (BackendError, ImplError) as error:
        parser.error(f"--backend {args.backend} --impl {args.impl or 'auto'}: {error}")
    columns = {"lstmx": lambda n: lstmx_run(model, vocab, args.tokens, n, args.impl),
               "lstmx-generic": lambda n: lstmx_run(model, vocab, args.tokens, n, "generic")}
    try:
        import torch

        machine["torch_threads"] = torch.get_num_threads()
        state = {k: torch.from_numpy(v) for k, v in language_model_to_torch(model).items()}
        embedding, lstm = torch.nn.Embedding(VOCAB, EMBEDDING), torch.nn.LSTM(EMBEDDING, HIDDEN)
        head = torch.nn.Linear(HIDDEN, VOCAB)
        embedding.weight.data = state["embedding.weight"]
        lstm.load_state_dict({k[len("lstm."):]: v for k, v in state.items() if k.startswith("lstm.")})
        head.weight.data, head.bias.data = state["head.weight"], state["head.bias"]
        device = "cuda" if args.backend == "cupy" else "cpu"
        net = tuple(module.to(device) for module in (embedding, lstm, head))
        prime = [int(i) for i in vocab.encode("def ")]
        columns["torch"] = lambda n: torch_run(torch, net, prime, args.tokens, n, device)
    except ImportError:
        print("PyTorch column absent: torch is not installed")
    print(f"machine: {machine}")
    flops_per_token = 2 * ((EMBEDDING + HIDDEN) * 4 * HIDDEN + HIDDEN * VOCAB)
    rows = {}
    for samples in args.samples:
        times: dict[str, list[float]] = {name: [] for name in columns}
        for name, run in columns.items():
            run(samples)  # warm-up (compiles, allocates)
        for _ in range(args.rounds):
            for name, run in columns.items():
                times[name].append(run(samples))
        rows[str(samples)] = {}
        for name, values in times.items():
            seconds = statistics.median(values)
            rate = samples * args.tokens / seconds
            rows[str(samples)][name] = {"tokens_per_s": rate, "gflops": rate * flops_per_token / 1e9}
            print(f"  {samples:>3} samples  {name:<6} {rate:>10,.0f} tokens/s  {rate * flops_per_token / 1e9:6.2f} GFLOP/s",
                  flush=True)
        if "torch" in times:
            ratio = rows[str(samples)]["lstmx"]["tokens_per_s"] / rows[str(samples)]["torch"]["tokens_per_s"]
            rows[str(samples)]["lstmx / torch"] = ratio
            print(f"  {samples:>3} samples  lstmx / torch tokens/s: {ratio:.2f}")
    report = {"machine": machine, "model": {"V": VOCAB, "E": EMBEDDING, "H": HIDDEN}, "tokens": args.tokens,
              "samples": rows}
    name = "generate_vs_torch.json" if args.backend == "numpy" else f"generate_vs_torch_{args.backend}.json"
    print(f"wrote {write_json(name, report)}")


if __name__ == "__main__":
    main()
