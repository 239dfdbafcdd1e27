"""The checks that keep the semantic cache from serving a different request's answer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache.guards import conflict
from rag.pipeline import build_pipeline

from .conftest import FIXTURES, ROOT, files_holding, make_settings


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        ("How do I cancel my order?", "How do I place an order?", "opposite"),
        ("How do I turn on notifications?", "How do I turn off notifications?", "opposite"),
        ("How can I add a card?", "How can I remove a card?", "opposite"),
        ("Can I cancel my order?", "Can I not cancel my order?", "negation"),
        ("Is delivery free over £50?", "Is delivery free over £100?", "numbers"),
        ("Do you ship to France?", "Do you ship to Canada?", "names"),
    ],
)
def test_guards_catch_classic_near_misses(a: str, b: str, why: str) -> None:
    reason = conflict(a, b)
    assert reason is not None and reason.startswith(why)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("How long do refunds take?", "How long does a refund take?"),
        ("I still haven't received my card", "When will my card arrive?"),  # one-sided negation is common
        ("What is COVID-19?", "What is COVID 19?"),
        ("Can I pay with PayPal?", "Do you take PayPal?"),
    ],
)
def test_guards_let_paraphrases_through(a: str, b: str) -> None:
    assert conflict(a, b) is None


async def test_near_duplicate_is_served_only_if_it_retrieves_the_same_sources(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    # A low threshold makes "track" look like "cancel" to the similarity search alone.
    settings = make_settings(example_data_dir, backend="extractive", cache_threshold=0.5)
    pipeline = build_pipeline(settings, embedder)
    pipeline.cache.clear()  # type: ignore[union-attr]
    first = await pipeline.answer("How do I cancel my order?")
    assert first.citations[0].document_id == "cancelling-an-order.md"

    same = await pipeline.answer("Is it possible to cancel an order I made?")
    assert same.cache.kind == "semantic" and same.answer == first.answer

    other = await pipeline.answer("How do I track my order?")  # similar text, another article
    assert not other.cache.hit and other.citations[0].document_id == "tracking-a-parcel.txt"
    await pipeline.aclose()


async def test_a_reworded_faq_question_is_served_when_both_searches_confirm_its_entry(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from ingest.runner import ingest

    settings = make_settings(tmp_path / "data", backend="extractive")  # defaults: 0.86, confirmed from 0.70
    ingest([FIXTURES / "covid_faq_slice.jsonl"], "default", settings, embedder, progress=False)
    pipeline = build_pipeline(settings, embedder)
    asked = "Am I at risk for COVID-19 from a package or products shipping from China?"
    reworded = "Can I get the corona virus from a package or products shipping from China?"  # cosine 0.835
    first = await pipeline.answer(asked)
    assert not first.cache.hit and first.citations[0].title == asked

    again = await pipeline.answer(reworded)
    assert again.cache.kind == "semantic" and again.answer == first.answer
    assert settings.cache_confirmed_threshold <= again.cache.similarity < settings.cache_threshold  # type: ignore[operator]
    await pipeline.audits_settled()  # an audit of that hit stores its fresh answer: not after the clear below

    # Without the confirmation the same question is a miss: only the plain threshold applies.
    strict = build_pipeline(
        make_settings(tmp_path / "data", backend="extractive", cache_confirmed_threshold=0.86), embedder
    )
    strict.cache.clear()  # type: ignore[union-attr]
    await strict.answer(asked)
    assert not (await strict.answer(reworded)).cache.hit
    await strict.aclose()
    await pipeline.aclose()


async def test_a_passage_that_answers_many_questions_is_never_confirmed(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    # Two questions about one article ("Returns and refunds", a title that is no question):
    # both searches find the article, but that says nothing about the two wanting one answer.
    pipeline = build_pipeline(make_settings(example_data_dir, backend="extractive"), embedder)
    pipeline.cache.clear()  # type: ignore[union-attr]
    first = await pipeline.answer("Can I return a sale item?")
    other = await pipeline.answer("How do I return an item?")  # cosine 0.76: above the confirmed threshold
    assert first.citations[0].document_id == other.citations[0].document_id == "returns-and-refunds.md"
    assert not other.cache.hit
    await pipeline.aclose()


def _rag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _check_operating_points(row: dict, x: str, y: str, written: Path) -> None:  # type: ignore[type-arg]
    """The configured policy's point is the row's own; the best plain threshold at each bound
    keeps to it and gets more as the bound loosens; the curve is written as JSON and PNG."""
    points = row["operating_points"]
    assert points["policy_as_configured"] == {"threshold": 0.8, x: row[x], y: row[y]}
    best = [points["best_plain_threshold"][b] for b in ("0.005", "0.01", "0.02")]
    for bound, point in zip((0.005, 0.01, 0.02), best, strict=True):
        assert point is None or point[x] <= bound
    got = [p[y] if p else 0.0 for p in best]
    assert got == sorted(got) and got[-1] > 0
    assert json.loads(written.with_suffix(".json").read_text())["plain_curve"]
    assert written.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_cache_on_pairs_and_on_an_faq(tmp_path: Path) -> None:
    result = _rag("eval", "cache", "--pairs", str(FIXTURES / "banking77_pairs_slice.jsonl"), "--json",
                  "--threshold", "0.8", "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    pairs = json.loads(result.stdout)
    assert pairs["n"] == 120 and set(pairs["by_kind"]) == {"same_intent", "hard_negative_lexical", "random_negative"}
    assert 0 < pairs["hit_rate"] <= 1 and 0 <= pairs["false_hit_rate"] < pairs["hit_rate"]
    _check_operating_points(pairs, "false_hit_rate", "hit_rate", tmp_path / "cache-bounds-banking77_pairs_slice")

    result = _rag("eval", "cache", "--corpus", str(FIXTURES / "covid_faq_slice.jsonl"),
                  "--qa", str(FIXTURES / "covid_faq_queries_slice.jsonl"), "--json", "--threshold", "0.8",
                  "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    faq = json.loads(result.stdout)
    assert faq["n"] == 40 and faq["retrieval_check"] is True
    assert abs(faq["correct_hit_rate"] + faq["wrong_hit_rate"] + faq["miss_rate"] - 1) < 1e-9
    assert faq["correct_hit_rate"] > faq["wrong_hit_rate"]
    _check_operating_points(faq, "wrong_hit_rate", "correct_hit_rate", tmp_path / "cache-bounds-fixtures")

    result = _rag(
        "eval", "cache", "--pairs", str(FIXTURES / "banking77_pairs_slice.jsonl"), "--sweep", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    png = tmp_path / "cache-sweep-banking77_pairs_slice.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "threshold 0.70" in result.stdout
    assert (
        "policy, threshold swept (oracle)" in result.stdout and "policy as configured (threshold 0.86)" in result.stdout
    )


def test_cache_stats_and_clear_over_rest_and_cli(tmp_path: Path, corpus: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from ingest.runner import ingest
    from serving.app import create_app

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    ingest([corpus], "other", settings, embedder, progress=False)
    with TestClient(create_app(settings, build_pipeline(settings, embedder))) as client:
        for collection in ("default", "other"):
            client.post("/v1/query", json={"question": "Do gift cards expire?", "collection": collection})
        client.post("/v1/query", json={"question": "Do gift cards expire?"})
        stats = client.get("/v1/cache/stats").json()
        assert stats["entries"] == 2 and stats["entries_by_collection"] == {"default": 1, "other": 1}
        assert stats["lookups"]["exact_hits"] == 1 and stats["bytes"] > 0
        asked = "how long do refunds take"  # in "other" only
        assert "5 to 7" in client.post("/v1/query", json={"question": asked, "collection": "other"}).json()["answer"]
        assert files_holding(tmp_path / "data" / "cache", asked)
        assert client.delete("/v1/cache", params={"collection": "other"}).json()["cleared"] == 2
        # The customer's words go with the answer: no exact-text key, nothing in a free page or the WAL.
        assert files_holding(tmp_path / "data" / "cache", asked) == []
        assert (
            client.post("/v1/query", json={"question": "Do gift cards expire?", "collection": "other"}).json()["cache"][
                "hit"
            ]
            is False
        )
        assert client.post("/v1/query", json={"question": "Do gift cards expire?"}).json()["cache"]["hit"] is True

    data = {"RAG_DATA_DIR": str(tmp_path / "data")}
    assert json.loads(_rag("cache", "stats", env=data).stdout)["entries"] == 2
    assert "cleared 2 cached answers" in _rag("cache", "clear", env=data).stdout
    assert json.loads(_rag("cache", "stats", env=data).stdout)["entries"] == 0


def test_calibrate_says_when_the_pairs_are_too_few_to_show_the_rate(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    result = _rag("cache", "calibrate", "--pairs", str(FIXTURES / "banking77_pairs_slice.jsonl"),
                  "--max-false-hit-rate", "0.01", "--env-file", str(env_file))  # fmt: skip
    assert result.returncode == 1 and "cannot show a false-hit rate under 1.0%" in result.stderr
    assert not env_file.exists()
