"""A bidirectional LSTM sequence classifier: scikit-learn's handwritten digits (8 × 8 images) read as sequences of
8 rows of 8 pixels, the two directions' final states concatenated into a linear softmax head.

    python examples/digits_classifier.py          # about 20 s on 2 CPU cores

Prints the held-out accuracy against the majority-class baseline, and exits 1 if it does not beat it.
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.datasets import load_digits

import lstmx
from lstmx.nn.layers import cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward
from lstmx.training.optim import Adam

HIDDEN, EPOCHS, BATCH = 32, 15, 64


class Classifier:
    """LSTM (both directions) → [h_forward, h_reverse] of the top layer → Linear → class logits."""

    def __init__(self, classes: int, seed: int = 0) -> None:
        self.lstm = lstmx.LSTM(8, HIDDEN, bidirectional=True, batch_first=True, seed=seed)
        self.backend = self.lstm.backend
        rng = np.random.default_rng(seed)
        head = {"head.weight": rng.uniform(-0.1, 0.1, (2 * HIDDEN, classes)).astype(np.float32),
                "head.bias": np.zeros(classes, dtype=np.float32)}
        self.params = {**self.lstm.params, **head}  # what the optimizer updates: the LSTM's and the head's

    def logits(self, images: np.ndarray):
        self.lstm.params = {name: self.params[name] for name in self.lstm.params}  # a step replaced the arrays
        _, (h, _), cache = self.lstm.forward(images)
        features = np.concatenate([h[0], h[1]], axis=-1)  # (B, 2H): the final state of each direction
        logits, head_cache = linear_forward(self.backend, features, self.params["head.weight"], self.params["head.bias"])
        return logits, (cache, head_cache, h)

    def loss_and_grads(self, images: np.ndarray, labels: np.ndarray):
        logits, (cache, head_cache, h) = self.logits(images)
        loss, loss_cache = cross_entropy_forward(self.backend, logits, labels)
        dlogits = cross_entropy_backward(self.backend, np.ones_like(loss), loss_cache)
        dfeatures, dweight, dbias = linear_backward(self.backend, dlogits, self.params["head.weight"], head_cache)
        dh = np.stack([dfeatures[:, :HIDDEN], dfeatures[:, HIDDEN:]])  # back to (dirs, B, H)
        dy = np.zeros((images.shape[0], 8, 2 * HIDDEN), np.float32)  # only the final states feed the head
        _, _, grads = self.lstm.backward(dy, cache, (dh, np.zeros_like(dh)))
        return float(loss), {**grads, "head.weight": dweight, "head.bias": dbias}


def main() -> int:
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # (N, 8 rows, 8 pixels), rows as time steps
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    model = Classifier(10)
    optimizer = Adam(model, lr=1e-2)
    rng = np.random.default_rng(1)
    for epoch in range(EPOCHS):
        shuffled = rng.permutation(train)
        for start in range(0, len(shuffled), BATCH):
            batch = shuffled[start:start + BATCH]
            _, grads = model.loss_and_grads(images[batch], labels[batch])
            optimizer.step(grads)
    logits, _ = model.logits(images[test])
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels[test]))
    majority = float(np.max(np.bincount(labels[train])) / len(train))
    baseline = float(np.mean(labels[test] == np.argmax(np.bincount(labels[train]))))
    print(f"bidirectional LSTM digit classifier: test accuracy {accuracy:.3f} "
          f"(majority-class baseline {baseline:.3f}; the majority class is {majority:.1%} of the training set)")
    return 0 if accuracy > baseline else 1


if __name__ == "__main__":
    sys.exit(main())
