"""Same recipe, lstmx vs PyTorch, side by side: a character language model trained the same way in both.

Recipe: 1-layer LSTM, hidden 256, embedding 64, batch 32, T = 100, Adam lr 2e-3, global-norm clip 5,
1000 steps, 90/10 train/validation split, state carried across windows and reset each epoch. Prints each
framework's validation loss (nats/char, whole validation split) and median ms/step, and writes JSON.

    python bench/train_vs_torch.py                 # both (PyTorch when importable)
    python bench/train_vs_torch.py --steps 200     # a quicker look

For CPU timings run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset in that command only.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from _common import english_text, machine_report, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.data import CharVocab, StreamBatches, split_ids  # noqa: E402
from lstmx.train import TrainConfig, Trainer  # noqa: E402


def run_lstmx(args, vocab, split) -> dict:
    model = lstmx.LanguageModel(len(vocab), args.embedding, args.hidden, 1, backend=args.backend, seed=args.seed)
    config = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, lr=args.lr, clip_norm=5.0,
                         eval_every=10**9, log_every=10**9)
    trainer = Trainer(model, vocab, split, config, Path(args.out) / "lstmx", progress=False)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return {"val_loss": trainer.evaluate()["val_loss"], "ms_per_step": 1e3 * statistics.median(times[5:])}


def run_torch(args, vocab, split) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(args.seed)

    class CharLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(len(vocab), args.embedding)
            self.lstm = torch.nn.LSTM(args.embedding, args.hidden)
            self.head = torch.nn.Linear(args.hidden, len(vocab))

        def forward(self, tokens, state):
            y, state = self.lstm(self.embedding(tokens), state)
            return self.head(y), state

    model = CharLM()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    backend = lstmx.get_backend("numpy")
    train = StreamBatches(backend, split.train, args.batch, args.seq_len)
    val = StreamBatches(backend, split.validation, args.batch, args.seq_len)
    state, index, times = None, 0, []
    for _ in range(args.steps):
        window = train.window(index)
        start = time.perf_counter()
        inputs, targets = torch.from_numpy(window.inputs), torch.from_numpy(window.targets)
        logits, state = model(inputs, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        state = tuple(s.detach() for s in state)
        times.append(time.perf_counter() - start)
        index += 1
        if index == len(train):
            index, state = 0, None
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for window in val:
            logits, state = model(torch.from_numpy(window.inputs), state)
            targets = torch.from_numpy(window.targets)
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), targets.reshape(-1),
                                                             reduction="sum"))
            count += targets.numel()
    return {"val_loss": total / count, "ms_per_step": 1e3 * statistics.median(times[5:]),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", help="text file (default: ~1 MB of public-domain English, see _common.py)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", default="bench/results/train_vs_torch")
    args = parser.parse_args()

    if args.text:
        text, source = Path(args.text).read_text(encoding="utf-8"), args.text
    else:
        text, source = english_text()
    vocab = CharVocab.from_text(text)
    split = split_ids(vocab.encode(text), 0.1)
    machine = machine_report()
    print(f"text: {source}: {len(text):,} chars, {len(vocab)} symbols; steps {args.steps}; machine {machine}")
    rows = {"lstmx": run_lstmx(args, vocab, split)}
    if not args.skip_torch:
        rows["pytorch"] = run_torch(args, vocab, split)
    print(f"\n{'framework':<10} {'val loss (nats/char)':>21} {'bits/char':>10} {'ms/step':>9}")
    for name, row in rows.items():
        if row is None:
            print(f"{name:<10} {'(not installed)':>21}")
            continue
        print(f"{name:<10} {row['val_loss']:>21.4f} {row['val_loss'] / math.log(2):>10.3f} {row['ms_per_step']:>9.1f}")
    if rows.get("pytorch"):
        ours, theirs = rows["lstmx"], rows["pytorch"]
        print(f"\nlstmx / pytorch: val loss {ours['val_loss'] / theirs['val_loss']:.4f}×, "
              f"time per step {ours['ms_per_step'] / theirs['ms_per_step']:.2f}×")
    path = write_json("train_vs_torch.json", {"source": source, "args": vars(args), "machine": machine, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
