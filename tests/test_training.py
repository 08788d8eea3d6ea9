"""End to end: a short run learns, sampling is repeatable, and the CLI works as a user would use it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lstmx import LanguageModel
from lstmx.cli import main
from lstmx.training.data import CharVocab
from lstmx.nn.sample import next_token_distribution, sample
from lstmx.training.runlog import read_log

from .test_checkpoint import TEXT, small_trainer


def test_short_run_learns_far_below_uniform(tmp_path, backend):
    trainer, _ = small_trainer(tmp_path, backend=backend, steps=150, eval_every=150, lr=1e-2)
    trainer.model.dropout = 0.0
    records = trainer.run()
    uniform = math.log(len(trainer.vocab))
    final_val = [r["val_loss"] for r in records if "val_loss" in r][-1]
    assert final_val < 0.5 * uniform, (final_val, uniform)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert any("tokens_per_s" in r for r in read_log(tmp_path / "log.jsonl"))


def test_sampling_is_deterministic_and_respects_options():
    vocab = CharVocab.from_text(TEXT)
    model = LanguageModel(len(vocab), 8, 16, seed=0)
    first = sample(model, vocab, "the ", 40, seed=5)
    assert first == sample(model, vocab, "the ", 40, seed=5)
    assert first != sample(model, vocab, "the ", 40, seed=6)
    assert len(first) == 40 and set(first) <= set(vocab.symbols)
    assert sample(model, vocab, "the ", 30, greedy=True) == sample(model, vocab, "the ", 30, greedy=True, seed=9)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        sample(model, vocab, "the Z", 5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample(model, vocab, "the", 5, temperature=0.0)


def test_top_k_and_temperature_distribution():
    logits = np.array([1.0, 3.0, 2.0, -1.0])
    top2 = next_token_distribution(logits, 1.0, 2)
    assert top2[0] == 0 and top2[3] == 0 and top2.sum() == pytest.approx(1.0)
    assert top2[1] / top2[2] == pytest.approx(math.e)
    cold = next_token_distribution(logits, 0.1, None)
    assert cold[1] > 0.99


def test_cli_train_then_sample(tmp_path, capsys):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text(TEXT * 3, encoding="utf-8")
    out = tmp_path / "run"
    code = main(["train", str(text_file), "--steps", "12", "--eval-every", "6", "--batch-size", "4", "--seq-len", "16",
                 "--hidden-size", "24", "--embedding-size", "8", "--out", str(out), "--no-progress",
                 "--sample-length", "20", "--test", "0.05"])
    assert code == 0
    err = capsys.readouterr().err
    assert "train loss" in err and "test loss" in err and "--- sample ---" in err
    assert (out / "last.npz").exists() and (out / "loss.png").exists()
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == 12

    assert main(["train", str(text_file), "--resume", str(out / "last.npz"), "--steps", "16", "--out", str(out),
                 "--no-progress", "--sample-length", "5"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out / "last.npz"), "--prime", "the ", "--length", "30", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == len("the ") + 30 + 1
    main(["sample", str(out / "last.npz"), "--prime", "the ", "--length", "30", "--seed", "3"])
    assert capsys.readouterr().out == first


def test_cli_errors_are_clear(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert main(["train", str(empty), "--no-progress"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not a zip")
    assert main(["sample", str(bogus)]) == 2
    assert "not a readable lstmx checkpoint" in capsys.readouterr().err


def test_cli_epochs_means_whole_passes(tmp_path, capsys):
    from lstmx.training.data import windows_per_epoch

    text_file = tmp_path / "corpus.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(text_file), "--epochs", "1", "--batch-size", "4", "--seq-len", "32", "--hidden-size", "8",
                 "--embedding-size", "4", "--out", str(out), "--no-progress", "--sample-length", "5",
                 "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.5", "--schedule", "cosine"]) == 0
    train_tokens = len(TEXT) - round(len(TEXT) * 0.1)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps[-1] == windows_per_epoch(train_tokens, 4, 32)
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["epoch"] == 1


def test_cli_word_level_with_unknown_words(tmp_path, capsys):
    text_file = tmp_path / "words.txt"
    text_file.write_text("the cat sat on the mat .\nthe dog sat on the log .\n" * 40, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(text_file), "--level", "word", "--unk", "--min-count", "2", "--steps", "4",
                 "--batch-size", "2", "--seq-len", "8", "--hidden-size", "8", "--embedding-size", "4",
                 "--out", str(out), "--no-progress", "--sample-length", "5"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out / "last.npz"), "--prime", "the zebra", "--length", "6", "--top-k", "3"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["the", "zebra"] and len(words) >= 6


def test_cli_greedy_sampling_ignores_the_seed(tmp_path, capsys):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    main(["train", str(text_file), "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--hidden-size", "8",
          "--embedding-size", "4", "--out", str(out), "--no-progress", "--sample-length", "3"])
    capsys.readouterr()
    texts = []
    for seed in ("1", "2"):
        assert main(["sample", str(out / "last.npz"), "--greedy", "--length", "20", "--seed", seed]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]


def test_cli_cupy_without_a_gpu_says_why(capsys):
    try:
        import lstmx

        lstmx.get_backend("cupy")
    except lstmx.BackendError:
        assert main(["train", "--backend", "cupy", "--steps", "1", "--no-progress"]) == 2
        assert "backend='cupy'" in capsys.readouterr().err
    else:
        pytest.skip("a usable CuPy is present")


def test_every_sampling_option_changes_what_is_drawn():
    """Each option is observable: top_k=1 and a near-zero temperature are greedy decoding whatever the seed,
    a high temperature spreads the draws, and the seed matters only when drawing."""
    vocab = CharVocab.from_text(TEXT)
    model = LanguageModel(len(vocab), 8, 16, seed=0)
    greedy = sample(model, vocab, "the ", 40, greedy=True)
    for seed in range(3):
        assert sample(model, vocab, "the ", 40, top_k=1, seed=seed) == greedy
        assert sample(model, vocab, "the ", 40, temperature=1e-4, seed=seed) == greedy
    draws = [sample(model, vocab, "the ", 200, temperature=t, seed=1) for t in (0.01, 1.0, 5.0)]
    assert len(set(draws)) == 3
    assert len(set(draws[2])) > len(set(draws[0]))  # hotter: more distinct characters
    top3 = sample(model, vocab, "the ", 200, top_k=3, temperature=5.0, seed=1)
    assert len(set(top3)) < len(set(draws[2]))


def test_cli_sampling_options_reach_the_sampler(tmp_path, capsys):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(text_file), "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--hidden-size", "8",
                 "--embedding-size", "4", "--out", str(out), "--no-progress", "--sample-length", "0"]) == 0
    capsys.readouterr()

    def run(*options):
        assert main(["sample", str(out / "last.npz"), "--length", "60", "--prime", "the", *options]) == 0
        return capsys.readouterr().out

    greedy = run("--greedy")
    assert run("--top-k", "1", "--seed", "4") == greedy
    assert run("--temperature", "0.0001", "--seed", "4") == greedy
    assert run("--seed", "4") != run("--seed", "5")
    assert run("--temperature", "5", "--seed", "4") != run("--temperature", "1", "--seed", "4")
    assert run("--length", "7").rstrip("\n") != greedy and len(run("--length", "7")) == len("the") + 7 + 1


@pytest.mark.parametrize("option,bound", [("clip_norm", "norm"), ("clip_value", "entry")])
def test_trainer_clips_what_it_applies(tmp_path, option, bound):
    """With plain SGD at lr 1 one step moves the parameters by exactly the clipped gradient."""
    from .test_checkpoint import small_trainer

    limit = 1e-3
    settings = {"clip_norm": None, "clip_value": None, option: limit}
    trainer, _ = small_trainer(tmp_path, steps=1, optimizer="sgd", lr=1.0, eval_every=1, **settings)
    before = trainer.model.state_dict()
    trainer.run()
    moves = [np.asarray(trainer.model.state_dict()[name], dtype=np.float64) - before[name] for name in before]
    if bound == "norm":
        total = math.sqrt(sum(float(np.sum(m * m)) for m in moves))
        assert limit * 0.99 < total <= limit * 1.001  # the raw gradient norm is far above the limit
    else:
        largest = max(float(np.max(np.abs(m))) for m in moves)
        assert largest == pytest.approx(limit, rel=1e-3)


def test_trainer_passes_optimizer_settings_through(tmp_path):
    from .test_checkpoint import small_trainer

    trainer, _ = small_trainer(tmp_path, optimizer="sgd", momentum=0.5, weight_decay=0.01, lr=0.3,
                               schedule="cosine", warmup_steps=2, min_lr=0.01, steps=10)
    assert (trainer.optimizer.momentum, trainer.optimizer.weight_decay) == (0.5, 0.01)
    assert trainer.optimizer.schedule(0) == pytest.approx(0.15) and trainer.optimizer.schedule(9) > 0.01
    assert trainer.optimizer.schedule(10) == pytest.approx(0.01)


def test_sample_streams_its_text_and_makes_several_samples_in_one_batch(tmp_path, capsys):
    """`lstmx sample` writes the text as it is generated (the same text the library's sample returns), and
    --num-samples N gives N texts in one batch: sample k is the single sample of --seed + k, and they differ."""
    from lstmx.training.checkpoint import load_model
    from lstmx.nn.sample import generate, sample, samples

    text_file = tmp_path / "corpus.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(text_file), "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--hidden-size", "8",
                 "--embedding-size", "4", "--out", str(out), "--no-progress", "--sample-length", "0"]) == 0
    model, vocab = load_model(out / "last.npz")
    capsys.readouterr()

    writes = []

    class Recording:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    import sys as system
    real = system.stdout
    system.stdout = Recording()
    try:
        assert main(["sample", str(out / "last.npz"), "--length", "30", "--prime", "the", "--seed", "3"]) == 0
    finally:
        system.stdout = real
    assert len(writes) >= 30  # one write per generated token, not one at the end
    assert "".join(writes) == "the" + sample(model, vocab, "the", 30, temperature=0.8, seed=3) + "\n"

    batch = samples(model, vocab, "the", 25, num_samples=3, temperature=1.5, seed=7)
    assert batch == [sample(model, vocab, "the", 25, temperature=1.5, seed=7 + k) for k in range(3)]
    assert len(set(batch)) == 3
    steps = list(generate(model, vocab, "the", 4, num_samples=2, greedy=True))
    assert [len(step) for step in steps] == [2, 2, 2, 2] and all(a == b for a, b in steps)
    assert main(["sample", str(out / "last.npz"), "--length", "10", "--num-samples", "2", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "--- sample 1 of 2 (seed 5) ---" in printed and "--- sample 2 of 2 (seed 6) ---" in printed
    assert main(["sample", str(out / "last.npz"), "--num-samples", "0"]) == 2


def test_the_trainer_resolves_its_plan_once_and_passes_it_down(tmp_path, monkeypatch):
    """The layer, loss, update and scatter choices are made when the trainer is built (from the requests then);
    a context entered later, or an environment variable set later, changes nothing; each step passes the plan's
    names down explicitly."""
    from lstmx.dispatch import registry
    from lstmx.training.loop import Trainer

    from .test_checkpoint import small_trainer

    with registry.use_layer_impl("numpy"):
        trainer, _ = small_trainer(tmp_path, steps=2)
    assert trainer.plan.layer == "numpy" and trainer.plan.update == trainer.optimizer.impl
    seen = []
    real = type(trainer.model).loss

    def recording(self, *args, **options):
        seen.append((options.get("impl"), options.get("loss_impl")))
        return real(self, *args, **options)

    monkeypatch.setattr(type(trainer.model), "loss", recording)
    monkeypatch.setenv("LSTMX_LAYER_IMPL", "generic")
    with registry.use_layer_impl("generic"):
        trainer.train_step()
    assert seen == [("numpy", trainer.plan.loss)]
    assert "layers numpy" in trainer.plan.describe()
    with pytest.raises(registry.LayerImplError, match="'cupy-graph' cannot run this call"):
        with registry.use_layer_impl("cupy-graph"):
            small_trainer(tmp_path / "other", steps=2)
