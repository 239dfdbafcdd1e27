"""The learned verifiers (pair network, request classifier) and `rag cache calibrate`, on
BANKING77 slices."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache import SemanticCache
from cache.verifier import PairVerifier, RequestVerifier, load_verifier, pair_features, pairs_from_labelled

from .conftest import FIXTURES, ROOT


def _labelled() -> tuple[list[str], list[str]]:
    with (FIXTURES / "banking77_train_slice.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


@pytest.fixture(scope="module")
def trained(embedder):  # type: ignore[no-untyped-def]
    """A verifier trained on four fifths of the labelled questions; the rest held out."""
    texts, labels = _labelled()
    vectors = np.asarray(embedder.embed_batch(texts), dtype=np.float32)
    fit = np.random.default_rng(0).random(len(texts)) < 0.8
    left, right, same = pairs_from_labelled(vectors[fit], [lab for lab, f in zip(labels, fit, strict=True) if f])
    verifier = PairVerifier.train(vectors[fit][left], vectors[fit][right], same, hidden=(256,))
    return verifier, vectors[~fit], [lab for lab, f in zip(labels, fit, strict=True) if not f]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float((pos[:, None] > neg[None, :]).mean())


def test_mined_pairs_mix_same_request_random_and_near_miss_pairs(trained) -> None:  # type: ignore[no-untyped-def]
    _, vectors, labels = trained
    left, right, same = pairs_from_labelled(vectors, labels, per_text=2)
    assert 4.5 * len(labels) < len(left) <= 5 * len(labels) and same.mean() == pytest.approx(0.4, abs=0.03)
    assert all((labels[a] == labels[b]) == bool(y) for a, b, y in zip(left, right, same, strict=True))
    near = (vectors[left] * vectors[right]).sum(axis=1)[same == 0]
    assert np.median(near) > 0.4  # the negatives include close, different requests


def test_numpy_forward_pass_is_the_trained_network(tmp_path: Path) -> None:
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 384)).astype(np.float32)
    b = rng.normal(size=(200, 384)).astype(np.float32)
    y = rng.integers(0, 2, 200)
    model = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=500, random_state=0).fit(pair_features(a, b), y)
    verifier = PairVerifier(model.coefs_, model.intercepts_, threshold=0.7)
    expected = model.predict_proba(pair_features(a, b))[:, 1]
    np.testing.assert_allclose(verifier.probability(a, b), expected, atol=1e-5)
    verifier.save(tmp_path / "v.npz")
    loaded = PairVerifier.load(tmp_path / "v.npz")
    assert loaded.threshold == pytest.approx(0.7)
    np.testing.assert_allclose(loaded.probability(a, b), expected, atol=1e-5)


def test_verifier_separates_held_out_pairs_better_than_cosine(trained) -> None:  # type: ignore[no-untyped-def]
    verifier, vectors, labels = trained  # questions the verifier never saw
    left, right, same = pairs_from_labelled(vectors, labels)
    a, b = vectors[left], vectors[right]
    assert _auc(verifier.probability(a, b), same) > _auc((a * b).sum(axis=1), same) + 0.03


def test_cache_consults_the_verifier(tmp_path: Path, trained, embedder) -> None:  # type: ignore[no-untyped-def]
    verifier = trained[0]
    a, b = embedder.embed_batch(["I still haven't got my card", "When will my card arrive?"])
    verifier.threshold = float(verifier.probability(a, b)[0]) + 1e-3  # just out of reach
    cache = SemanticCache(tmp_path, dimension=384, threshold=0.0, verifier=verifier)
    cache.put("s", "I still haven't got my card", a, {"answer": "A"})
    assert cache.get_similar("s", b) is None and cache.lookups["rejected_by_verifier"] == 1
    verifier.threshold -= 2e-3
    assert cache.get_similar("s", b) is not None


@pytest.mark.parametrize("requests", [2, 12])
def test_request_verifier_is_the_trained_classifier_and_survives_a_round_trip(
    tmp_path: Path, embedder, requests: int
) -> None:  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    texts, labels = _labelled()
    kept = sorted(set(labels))[:requests]
    rows = [(t, lab) for t, lab in zip(texts, labels, strict=True) if lab in kept]
    vectors = np.asarray(embedder.embed_batch([t for t, _ in rows]), dtype=np.float32)
    names = [lab for _, lab in rows]
    verifier = RequestVerifier.train(vectors, names, c=10.0)
    expected = LogisticRegression(C=10.0, max_iter=1000).fit(vectors, names).predict_proba(vectors)
    np.testing.assert_allclose(verifier.requests(vectors), expected, atol=1e-4)
    a, b = vectors[:-1], vectors[1:]
    np.testing.assert_allclose(verifier.probability(a, b), (expected[:-1] * expected[1:]).sum(axis=1), atol=1e-4)
    verifier.threshold = 0.42
    verifier.save(tmp_path / "r.npz")
    loaded = load_verifier(tmp_path / "r.npz")
    assert isinstance(loaded, RequestVerifier) and loaded.threshold == pytest.approx(0.42)
    np.testing.assert_allclose(loaded.probability(a, b), verifier.probability(a, b), atol=1e-6)
    with pytest.raises(ValueError, match="not a pair verifier"):
        PairVerifier.load(tmp_path / "r.npz")


def test_request_verifier_tells_held_out_requests_apart_better_than_cosine(embedder) -> None:  # type: ignore[no-untyped-def]
    texts, labels = _labelled()
    vectors = np.asarray(embedder.embed_batch(texts), dtype=np.float32)
    fit = np.random.default_rng(1).random(len(texts)) < 0.8
    verifier = RequestVerifier.train(vectors[fit], [lab for lab, f in zip(labels, fit, strict=True) if f])
    held = vectors[~fit]
    left, right, same = pairs_from_labelled(held, [lab for lab, f in zip(labels, fit, strict=True) if not f])
    a, b = held[left], held[right]
    assert _auc(verifier.probability(a, b), same) > _auc((a * b).sum(axis=1), same) + 0.03


def _rag(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_calibrate_from_labelled_questions_writes_a_verifier_the_eval_uses(tmp_path: Path) -> None:
    from rag.settings import Settings

    (tmp_path / ".env").write_text("RAG_TOP_K=6\n")
    result = _rag("cache", "calibrate", "--questions", str(FIXTURES / "banking77_train_slice.csv"),
                  "--max-false-hit-rate", "0.1", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    assert 0.0 <= float(env["RAG_CACHE_THRESHOLD"]) <= 1.0
    assert Path(env["RAG_CACHE_VERIFIER"]).is_file() and "held-out pairs" in result.stdout
    assert "(request verifier (C=" in result.stdout  # labelled questions: the request classifier won
    assert isinstance(load_verifier(Path(env["RAG_CACHE_VERIFIER"])), RequestVerifier)
    settings = Settings(_env_file=tmp_path / ".env")  # type: ignore[call-arg]
    assert settings.top_k == 6 and settings.cache_verifier == Path(env["RAG_CACHE_VERIFIER"])
    evaluated = _rag("eval", "cache", "--pairs", str(FIXTURES / "banking77_pairs_slice.jsonl"), "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    row = json.loads(evaluated.stdout)
    assert row["verifier"] is True and row["n"] == 120
    assert {"hit_rate", "false_hit_rate"} <= row.keys()


def test_a_missing_verifier_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"RAG_CACHE_VERIFIER={tmp_path / 'gone.npz'}\n")
    result = _rag("cache", "stats", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert result.returncode == 1 and "rag cache calibrate" in result.stderr
    (tmp_path / ".env").write_text("RAG_CACHE_VERIFIER=\n")  # empty means unset
    assert _rag("cache", "stats", "--data-dir", str(tmp_path / "data"), cwd=tmp_path).returncode == 0
