"""Same recipe, lstmx vs PyTorch, side by side: a character language model trained the same way in both.

Recipe: 1-layer LSTM, hidden 256, embedding 64, batch 32, T = 100, Adam lr 2e-3, global-norm clip 5,
1000 steps, 90/10 train/validation split, state carried across windows and reset each epoch. The two
trainings take turns in blocks of 50 steps (with a pause between, so neither runs beside the other's
spinning worker threads), so noise on the machine reaches both alike. A block is timed from its start to
the end of its last step's work on the device (one synchronisation per block, as in real training), and
ms/step is the median over blocks. Prints each framework's validation loss (nats/char, whole validation
split) and ms/step, and writes JSON.

    python bench/train_vs_torch.py                 # both (PyTorch when importable), on the CPU
    python bench/train_vs_torch.py --steps 200     # a quicker look
    python bench/train_vs_torch.py --backend cupy  # lstmx on CuPy against PyTorch + cuDNN on the same GPU
    python bench/train_vs_torch.py --precision bf16   # lstmx's precision="bf16" against PyTorch's AMP (autocast
                                                     # to bfloat16; "fp16" adds its GradScaler); writes
                                                     # train_vs_torch_bf16.json

For CPU timings run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset in that command only.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from _common import bench_parser, english_text, machine_report, text_file, write_json  # noqa: E402

import lstmx  # noqa: E402
from lstmx.backend import BACKEND_NAMES  # noqa: E402
from lstmx.cli import flag_type  # noqa: E402
from lstmx.training.data import CharVocab, StreamBatches, split_ids  # noqa: E402
from lstmx.options import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT  # noqa: E402
from lstmx.training.loop import TrainConfig, Trainer  # noqa: E402


class LstmxRunner:
    """The recipe in lstmx, one training step per call (the trainer's own step: losses stay on the device)."""

    name = "lstmx"

    def __init__(self, args, vocab, split) -> None:
        model = lstmx.LanguageModel(len(vocab), args.embedding, args.hidden, 1, backend=args.backend, seed=args.seed,
                                    precision=args.precision)
        config = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, lr=args.lr, clip_norm=5.0,
                             eval_every=10**9, log_every=10**9, precision=args.precision)
        self.folder = tempfile.TemporaryDirectory(prefix="lstmx-bench-")  # the trainer's run folder, left empty
        with lstmx.dispatch.registry.use_update_impl(args.update_impl):
            self.trainer = Trainer(model, vocab, split, config, self.folder.name, progress=False)
        self.loss_impl, self.layer_impl = args.loss_impl, args.impl
        self.sync = lambda: None
        if args.backend == "cupy":
            import cupy

            self.sync = cupy.cuda.Stream.null.synchronize

    def step(self) -> None:
        with lstmx.dispatch.registry.use_loss_impl(self.loss_impl), lstmx.use_layer_impl(self.layer_impl):
            self.trainer.train_step()
        if len(self.trainer._pending) >= 100:  # what the trainer does at each log step: read the losses back
            self.trainer.take_losses()

    def validation_loss(self) -> float:
        with lstmx.use_layer_impl(self.layer_impl):
            return self.trainer.evaluate()["val_loss"]

    def info(self) -> dict:
        return {}


class TorchRunner:
    """The same recipe in PyTorch: Embedding → nn.LSTM → Linear, Adam, clip_grad_norm_, the same batches."""

    name = "pytorch"

    def __init__(self, args, vocab, split) -> None:
        import torch

        self.torch, self.vocab_size = torch, len(vocab)
        self.device = "cuda" if args.backend == "cupy" else "cpu"
        if self.device == "cuda":  # cuDNN in float32, as lstmx computes (no TF32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        self.sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        torch.manual_seed(args.seed)
        self.embedding = torch.nn.Embedding(len(vocab), args.embedding)
        self.lstm = torch.nn.LSTM(args.embedding, args.hidden)
        self.head = torch.nn.Linear(args.hidden, len(vocab))
        modules = torch.nn.ModuleList([self.embedding, self.lstm, self.head]).to(self.device)
        self.parameters = list(modules.parameters())
        self.optimizer = torch.optim.Adam(self.parameters, lr=args.lr)
        backend = lstmx.get_backend("numpy")
        self.train = StreamBatches(backend, split.train, args.batch, args.seq_len)
        self.val = StreamBatches(backend, split.validation, args.batch, args.seq_len)
        self.state, self.index = None, 0
        # the 16-bit precisions as PyTorch users train them: autocast, and for float16 its GradScaler
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
        self.scaler = torch.amp.GradScaler(self.device) if args.precision == "fp16" else None
        with self.mixed():  # PyTorch's CPU LSTM (oneDNN) has no float16 training kernel: found out here
            self.logits(self.train.window(0).inputs[:2, :1], None)[0].float().sum().backward()
        self.optimizer.zero_grad(set_to_none=True)

    def mixed(self):
        return self.torch.autocast(self.device, dtype=self.autocast or self.torch.float32,
                                   enabled=self.autocast is not None)

    def tensor(self, array):
        return self.torch.from_numpy(array).to(self.device)

    def logits(self, tokens, state):
        y, state = self.lstm(self.embedding(self.tensor(tokens)), state)
        return self.head(y), state

    def step(self) -> None:
        torch = self.torch
        window = self.train.window(self.index)
        with self.mixed():
            logits, state = self.logits(window.inputs, self.state)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size).float(),
                                                     self.tensor(window.targets).reshape(-1))
        self.optimizer.zero_grad()
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, 5.0)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, 5.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.state = tuple(s.detach() for s in state)
        self.index += 1
        if self.index == len(self.train):
            self.index, self.state = 0, None

    def validation_loss(self) -> float:
        torch = self.torch
        total, count, state = 0.0, 0, None
        with torch.no_grad(), self.mixed():
            for window in self.val:
                logits, state = self.logits(window.inputs, state)
                targets = self.tensor(window.targets).reshape(-1)
                total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size).float(), targets,
                                                                 reduction="sum"))
                count += targets.numel()
        return total / count

    def info(self) -> dict:
        info = {"torch": self.torch.__version__, "torch_threads": self.torch.get_num_threads(), "device": self.device}
        if self.device == "cuda":
            info["gpu"] = self.torch.cuda.get_device_name()
        return info


BLOCK = 50  # steps one framework runs before the other takes its turn
PAUSE = 0.5  # seconds between turns: OpenBLAS's and OpenMP's idle threads spin for a while after work


def make_runners(args, vocab, split) -> list:
    runners = [LstmxRunner(args, vocab, split)]
    if not args.skip_torch:
        try:
            runners.append(TorchRunner(args, vocab, split))
        except ImportError:
            print("PyTorch is not installed: lstmx alone")
        except RuntimeError as error:
            print(f"PyTorch cannot run the recipe at precision {args.precision} here: lstmx alone "
                  f"({str(error).splitlines()[0]})")
    return runners


def main() -> None:
    parser = bench_parser(__file__, __doc__)
    parser.add_argument("--text", type=text_file,
                        help="UTF-8 text file (default: ~1 MB of public-domain English, see _common.py)")
    for flag, default, what in (("--steps", 1000, "training steps"), ("--batch", 32, "sequences per step"),
                                ("--seq-len", 100, "characters per sequence"), ("--hidden", 256, "LSTM units"),
                                ("--embedding", 64, "embedding width")):
        parser.add_argument(flag, type=flag_type(flag, POSITIVE_INT, int), default=default, help=what)
    parser.add_argument("--lr", type=flag_type("--lr", POSITIVE, float), default=2e-3, help="Adam's learning rate")
    parser.add_argument("--seed", type=flag_type("--seed", NON_NEGATIVE_INT, int), default=0)
    parser.add_argument("--backend", default="numpy", choices=BACKEND_NAMES,
                        help="lstmx's backend; cupy also runs PyTorch on CUDA")
    parser.add_argument("--skip-torch", action="store_true")
    registry = lstmx.dispatch.registry
    parser.add_argument("--impl", default="auto", choices=[registry.AUTO, *registry.NAMES],
                        help="lstmx layer implementation")
    parser.add_argument("--update-impl", default="auto", choices=[registry.AUTO, *registry.UPDATE_REQUESTS.names],
                        help="lstmx optimizer update")
    parser.add_argument("--loss-impl", default="auto", choices=[registry.AUTO, *registry.LOSS_REQUESTS.names],
                        help="lstmx loss and gradient")
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16", "fp16"],
                        help="lstmx's precision; PyTorch's autocast dtype (with GradScaler for fp16)")
    args = parser.parse_args()
    try:
        lstmx.get_backend(args.backend)
    except lstmx.BackendError as error:
        parser.error(f"argument --backend: {error}")
    if args.text:
        try:
            text, source = args.text.read_text(encoding="utf-8"), str(args.text)
        except UnicodeDecodeError as error:
            parser.error(f"argument --text: {args.text} is not UTF-8 text ({error.reason} at byte {error.start})")
    else:
        text, source = english_text()
    vocab = CharVocab.from_text(text)
    split = split_ids(vocab.encode(text), 0.1)
    machine = machine_report()
    print(f"text: {source}: {len(text):,} chars, {len(vocab)} symbols; steps {args.steps}; machine {machine}")
    runners = make_runners(args, vocab, split)
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for block_start in range(0, args.steps, BLOCK):
        for runner in runners:  # alternate blocks, so the machine's slow and fast spells reach both alike
            time.sleep(PAUSE)  # let the other library's spinning worker threads go idle first
            steps = min(BLOCK, args.steps - block_start)
            runner.sync()
            start = time.perf_counter()
            for _ in range(steps):
                runner.step()
            runner.sync()
            times[runner.name].append((time.perf_counter() - start) / steps)
    rows = {r.name: {"val_loss": r.validation_loss(), "ms_per_step": 1e3 * statistics.median(times[r.name][1:] or times[r.name]),
                     **r.info()} for r in runners}
    print(f"\n{'framework':<10} {'val loss (nats/char)':>21} {'bits/char':>10} {'ms/step':>9}")
    for name, row in rows.items():
        print(f"{name:<10} {row['val_loss']:>21.4f} {row['val_loss'] / math.log(2):>10.3f} {row['ms_per_step']:>9.1f}")
    if rows.get("pytorch"):
        ours, theirs = rows["lstmx"], rows["pytorch"]
        print(f"\nlstmx / pytorch: val loss {ours['val_loss'] / theirs['val_loss']:.4f}×, "
              f"time per step {ours['ms_per_step'] / theirs['ms_per_step']:.2f}×")
    name = "train_vs_torch.json" if args.precision == "float32" else f"train_vs_torch_{args.precision}.json"
    path = write_json(name, {"source": source, "args": {**vars(args), "text": source}, "machine": machine,
                             "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
