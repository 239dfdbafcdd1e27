"""Learned verifiers: does this cached question ask for the same thing as the new one?

One cosine threshold cannot tell "I still haven't got my card" / "when will my card arrive"
(same request, cosine 0.55) from "how do I top up by card" / "why did my card top-up fail"
(different requests, cosine 0.85). A small network over the pair's embeddings can, once it
has seen labelled pairs of the domain: ``rag cache calibrate`` trains it (scikit-learn's
MLPClassifier) and stores its weights as plain arrays in a ``.npz`` file (no pickle); the
cache runs the forward pass in numpy, a few microseconds a candidate.

Two kinds, each learnt from data the user supplies (``rag cache calibrate``), never from
the questions being scored:

- :class:`PairVerifier`, from labelled pairs: a network over the pair's features, symmetric
  in the two questions (cosine, the element-wise product and the absolute difference of the
  two unit vectors);
- :class:`RequestVerifier`, from questions labelled with their request (an intent, an FAQ
  entry, a ticket category): a classifier of requests over the question vector, and two
  questions are one request with probability sum_k p(k | a) p(k | b). Each request is a
  cluster with a decision boundary of its own, where one cosine threshold has one for all.
  On banking77 (trained on its 10,003 training questions, measured on the 9,240 test pairs,
  whose questions it never saw) it serves 2.4x the hits of the MLP pair verifier trained
  on pairs mined from the same questions, at the same false-hit budget (README, "Response cache").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of [cosine, a*b, |a-b|] for matching rows of ``a`` and ``b`` (unit vectors)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    b = np.atleast_2d(np.asarray(b, dtype=np.float32))
    product = a * b
    return np.hstack([product.sum(axis=1, keepdims=True), product, np.abs(a - b)])


class PairVerifier:
    kind = "pairs"

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], threshold: float = 0.5) -> None:
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]
        self.biases = [np.asarray(b, dtype=np.float32) for b in biases]
        self.threshold = threshold

    def probability(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """P(same request) for each row pair."""
        h = pair_features(a, b)
        for w, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + bias, 0.0)
        logit = (h @ self.weights[-1] + self.biases[-1]).reshape(-1)
        return 1.0 / (1.0 + np.exp(-logit))

    def accepts(self, a: np.ndarray, b: np.ndarray) -> bool:
        return bool(self.probability(a, b)[0] >= self.threshold)

    @classmethod
    def train(
        cls, a: np.ndarray, b: np.ndarray, labels: np.ndarray, hidden: tuple[int, ...] = (512, 128), seed: int = 0
    ) -> PairVerifier:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        x = pair_features(a, b)
        model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=60, early_stopping=True, random_state=seed)
        with warnings.catch_warnings():  # the epoch cap is deliberate: early stopping or 60 epochs
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, np.asarray(labels, dtype=int))
        return cls(model.coefs_, model.intercepts_)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        _save(path, self.kind, self.threshold, arrays)

    @classmethod
    def load(cls, path: Path, threshold: float | None = None) -> PairVerifier:
        verifier = load_verifier(path, threshold)
        if not isinstance(verifier, cls):
            raise ValueError(f"{path} holds a {verifier.kind} verifier, not a pair verifier")
        return verifier


class RequestVerifier:
    """P(same request) from a linear classifier of requests (softmax over the question
    vector): the forward pass is one small matrix product a candidate."""

    kind = "requests"

    def __init__(self, weights: np.ndarray, bias: np.ndarray, threshold: float = 0.5) -> None:
        self.weights = np.asarray(weights, dtype=np.float32)  # dimension x requests
        self.bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        self.threshold = threshold

    def requests(self, x: np.ndarray) -> np.ndarray:
        """p(request | question) for each row."""
        logits = np.atleast_2d(np.asarray(x, dtype=np.float32)) @ self.weights + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def probability(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """P(same request) for each row pair: both questions ask the same one of the requests."""
        return (self.requests(a) * self.requests(b)).sum(axis=1)

    def accepts(self, a: np.ndarray, b: np.ndarray) -> bool:
        return bool(self.probability(a, b)[0] >= self.threshold)

    @classmethod
    def train(cls, vectors: np.ndarray, labels: Sequence[str], c: float = 10.0) -> RequestVerifier:
        """Multinomial logistic regression (scikit-learn) of the labels on the vectors;
        ``c`` is its inverse regularisation (``rag cache calibrate`` picks it on held-out data)."""
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=c, max_iter=1000)
        model.fit(np.asarray(vectors, dtype=np.float32), np.asarray(labels))
        weights, bias = model.coef_.T, model.intercept_
        if weights.shape[1] == 1:  # two requests: scikit-learn keeps one logit, softmax wants both
            weights, bias = np.hstack([-weights / 2, weights / 2]), np.r_[-bias / 2, bias / 2]
        return cls(weights, bias)

    def save(self, path: Path) -> None:
        _save(path, self.kind, self.threshold, {"w": self.weights, "b": self.bias})


def _save(path: Path, kind: str, threshold: float, arrays: dict[str, Any]) -> None:
    """Plain arrays in an ``.npz`` file (no pickle): the kind, the cut and the weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, kind=np.str_(kind), threshold=np.float32(threshold), **arrays)


Verifier = PairVerifier | RequestVerifier


def load_verifier(path: Path, threshold: float | None = None) -> Verifier:
    """Either kind of verifier from the file ``save`` wrote (a file without a kind is a pair
    verifier: those were written before there were two)."""
    with np.load(path, allow_pickle=False) as data:
        kind = str(data["kind"]) if "kind" in data.files else PairVerifier.kind
        stored = float(data["threshold"])
        cut = stored if threshold is None else threshold
        if kind == RequestVerifier.kind:
            return RequestVerifier(data["w"], data["b"], cut)
        if kind != PairVerifier.kind:
            raise ValueError(f"{path}: unknown verifier kind {kind!r}")
        layers = sum(1 for key in data.files if key.startswith("w"))
        return PairVerifier([data[f"w{i}"] for i in range(layers)], [data[f"b{i}"] for i in range(layers)], cut)


def pairs_from_labelled(
    vectors: np.ndarray, labels: Sequence[str], per_text: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training pairs from questions labelled with their request (intent): for each question,
    ``per_text`` others with its label, one random other label, and its ``per_text`` nearest
    neighbours with another label (the near misses a cache must refuse).

    Returns index arrays (left, right) into ``vectors`` and the 0/1 labels."""
    rng = np.random.default_rng(seed)
    label_arr = np.asarray(labels)
    by_label: dict[str, np.ndarray] = {lab: np.flatnonzero(label_arr == lab) for lab in set(labels)}
    pairs: list[tuple[int, int, int]] = []
    unit = np.asarray(vectors, dtype=np.float32)
    for start in range(0, len(unit), 1024):
        block = unit[start : start + 1024] @ unit.T
        for row, sims in enumerate(block):
            i = start + row
            mates = by_label[label_arr[i]]
            mates = mates[mates != i]
            for j in rng.choice(mates, min(per_text, len(mates)), replace=False):
                pairs.append((i, int(j), 1))
            others = np.flatnonzero(label_arr != label_arr[i])
            if len(others):
                pairs.append((i, int(rng.choice(others)), 0))
            sims[i] = -2.0
            nearest = np.argsort(-sims)[: 8 * per_text + 8]
            for j in [j for j in nearest if label_arr[j] != label_arr[i]][:per_text]:
                pairs.append((i, int(j), 0))
    left, right, same = (np.asarray(column) for column in zip(*pairs, strict=True))
    return left, right, same
