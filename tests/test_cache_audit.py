"""The error bound the cache keeps: audits of served near-duplicate hits, the boundaries they
teach (per entry, per collection), the estimate `rag cache stats` shows, and the pipeline's
background audit on the real embedder, FAISS, diskcache and extractive backend."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from cache import SemanticCache
from cache.audit import interval
from rag.pipeline import Pipeline, build_pipeline
from rag.settings import Settings

from .conftest import make_settings


def test_clopper_pearson_interval_matches_the_closed_forms() -> None:
    assert interval(0, 300) == pytest.approx((0.0, 1 - 0.025 ** (1 / 300)), abs=1e-6)
    assert interval(300, 300) == pytest.approx((0.025 ** (1 / 300), 1.0), abs=1e-6)
    low, high = interval(5, 100)
    assert 0.0164 < low < 0.0165 and 0.1128 < high < 0.1129  # published CP values for 5/100
    assert interval(0, 0) == (0.0, 1.0)


def _cache(tmp_path: Path, embedder, **kwargs) -> tuple[SemanticCache, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    texts = ["How long do refunds take?", "How long does a refund take?", "How many days until I get my refund?"]
    vectors = dict(zip(texts, embedder.embed_batch(texts), strict=True))
    return SemanticCache(tmp_path, dimension=384, threshold=0.6, margin=0.0, **kwargs), vectors


def test_a_wrong_audit_raises_that_entrys_boundary_to_the_similarity_it_failed_at(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    cache, v = _cache(tmp_path, embedder)
    cache.put("s", "How long do refunds take?", v["How long do refunds take?"], {"answer": "A"}, tag="shop")
    far = cache.get_similar("s", v["How many days until I get my refund?"])
    near = cache.get_similar("s", v["How long does a refund take?"])
    assert far is not None and near is not None and far.similarity < near.similarity
    cache.learn(far, agreed=False)
    assert cache.get_similar("s", v["How many days until I get my refund?"]) is None
    assert cache.lookups["rejected_by_evidence"] == 1
    assert cache.get_similar("s", v["How long does a refund take?"]) is not None  # closer: still served
    cache.learn(near, agreed=True)
    estimate = cache.stats()["wrong_hits"]["shop"]
    assert estimate["audited_hits"] == 2 and estimate["wrong_hits"] == 1 and estimate["estimated_wrong_rate"] == 0.5
    assert estimate["max_wrong_rate"] == 0.01 and estimate["interval_95"][0] > 0.01  # 1 in 2: surely over 1%
    assert estimate["status"].startswith("over the bound")
    reopened = SemanticCache(tmp_path, dimension=384, threshold=0.6)  # evidence is on disk, for every process
    assert reopened.get_similar("s", v["How many days until I get my refund?"]) is None


def test_a_recount_of_a_hit_whose_first_count_was_lost_counts_it_once(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    cache, v = _cache(tmp_path, embedder)
    cache.put("s", "How long do refunds take?", v["How long do refunds take?"], {"answer": "A"}, tag="shop")
    hit = cache.get_similar("s", v["How long does a refund take?"])
    assert hit is not None
    cache.learn(hit, agreed=False, recount=True)  # a thumbs-down after an up whose count never landed
    estimate = cache.stats()["wrong_hits"]["shop"]
    assert (estimate["audited_hits"], estimate["wrong_hits"], estimate["estimated_wrong_rate"]) == (1, 1, 1.0)
    cache.learn(hit, agreed=True)  # counts from here on add up as usual
    assert cache.stats()["wrong_hits"]["shop"]["audited_hits"] == 2


def test_a_collection_over_its_bound_serves_only_closer_duplicates(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    cache, v = _cache(tmp_path, embedder, max_wrong_rate=lambda tag: 0.2 if tag == "strict" else 0.9)
    for tag in ("strict", "loose"):
        cache.put(tag, "How long do refunds take?", v["How long do refunds take?"], {"answer": tag}, tag=tag)
    served = {tag: cache.get_similar(tag, v["How long does a refund take?"]) for tag in ("strict", "loose")}
    for tag, hit in served.items():
        assert hit is not None
        for _ in range(4):  # four of five audited hits were wrong, at a lower similarity than this one
            cache.learn(
                hit.__class__("semantic", hit.similarity - 0.05, hit.question, hit.payload, hit.ref + "x", tag), False
            )
        cache.learn(hit, True)
    stats = cache.stats()["wrong_hits"]
    assert stats["strict"]["interval_95"][0] > 0.2 and stats["strict"]["status"].startswith("over the bound")
    assert stats["loose"]["interval_95"][0] < 0.9
    assert cache.get_similar("strict", v["How many days until I get my refund?"]) is None  # below the wrong ones
    assert cache.get_similar("strict", v["How long does a refund take?"]) is not None  # above them all
    assert cache.get_similar("loose", v["How many days until I get my refund?"]) is not None  # within its bound
    # The operator tightens the bound: the same evidence now puts "loose" over it, at once.
    tightened = SemanticCache(tmp_path, dimension=384, threshold=0.6, margin=0.0, max_wrong_rate=lambda tag: 0.2)
    assert tightened.stats()["wrong_hits"]["loose"]["status"].startswith("over the bound")
    assert tightened.get_similar("loose", v["How many days until I get my refund?"]) is None
    assert tightened.get_similar("loose", v["How long does a refund take?"]) is not None


def test_max_wrong_rate_is_one_rate_or_rates_per_collection(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cache_max_wrong_rate="0.02, billing=0.002")
    assert settings.max_wrong_rate() == 0.02 and settings.max_wrong_rate("billing") == 0.002
    assert settings.max_wrong_rate("shop") == 0.02 and make_settings(tmp_path).max_wrong_rate("shop") == 0.01
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_settings(tmp_path, cache_max_wrong_rate="1%")


def _tamper(pipeline: Pipeline, citations: list[dict[str, object]]) -> None:
    """Fault injection: every cached answer now cites other passages, as a wrong hit would.
    Their retrieval hints stay, so the source check still lets them through."""
    cache = pipeline.cache
    assert cache is not None
    entries = cache.store._store  # type: ignore[attr-defined]  # the local store's diskcache
    for key in list(entries.iterkeys()):
        entry = entries.get(key)
        if str(key).startswith("e:"):
            entry["payload"] = {**entry["payload"], "citations": citations, "answer": "Gift cards never expire."}
            entries.set(key, entry)


async def test_pipeline_audits_served_hits_in_the_background(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings(example_data_dir, backend="extractive", cache_audit_rate=1.0)
    pipeline = build_pipeline(settings, embedder)
    try:
        first = await pipeline.answer("How long do refunds take?")
        again = await pipeline.answer("How long does a refund take?")
        assert again.cache.kind == "semantic" and again.citations == first.citations
        await pipeline.audits_settled()
        assert pipeline.cache is not None
        shop = pipeline.cache.stats()["wrong_hits"]["default"]
        assert (shop["audited_hits"], shop["wrong_hits"]) == (1, 0)

        gift = await pipeline.answer("Do gift cards expire?")
        _tamper(pipeline, [asdict(c) for c in gift.citations])
        wrong = await pipeline.answer("How many days does a refund take?")  # served the tampered answer
        assert wrong.cache.kind == "semantic" and wrong.answer == "Gift cards never expire."
        await pipeline.audits_settled()
        shop = pipeline.cache.stats()["wrong_hits"]["default"]
        assert (shop["audited_hits"], shop["wrong_hits"]) == (2, 1)
        fixed = await pipeline.answer("How many days does a refund take?")  # the audit's fresh answer
        assert fixed.cache.kind == "exact" and [c.id for c in fixed.citations] == [c.id for c in first.citations]
    finally:
        await pipeline.aclose()


def test_eval_replays_audits_in_arrival_order(embedder) -> None:  # type: ignore[no-untyped-def]
    from eval.cache import Audits, eval_pairs

    wrong = {"text_a": "How do I top up by card?", "text_b": "Why did my card top-up fail?", "label": 0}
    right = {"text_a": "How long do refunds take?", "text_b": "How long does a refund take?", "label": 1}
    pairs = [wrong, dict(wrong), right]
    plain = eval_pairs(pairs, embedder, threshold=0.3, guards=False)
    assert plain["false_hit_rate"] == 1.0 and plain["audits"] is None
    replayed = eval_pairs(pairs, embedder, threshold=0.3, guards=False, audits=Audits(rate=1.0, max_wrong_rate=0.0))
    # The first wrong hit is scored before it is learnt from; the repeat then misses.
    assert replayed["false_hit_rate"] == 0.5 and replayed["hit_rate"] == 1.0
    assert replayed["audits"]["audited_hits"] == 2 and replayed["audits"]["wrong_hits"] == 1


async def test_an_audit_asks_again_with_the_callers_filters_not_the_planned_entity(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    import json

    from ingest.runner import ingest

    facts = {
        "Harbor Hotel": ["has free parking for guests", "serves breakfast from 7am to 10am", "has 40 sea-view rooms"],
        "Station Inn": ["has no parking of its own", "serves no breakfast", "has 12 rooms by the station"],
    }
    lines = [
        json.dumps({"id": f"{name}-{n}", "title": name, "text": f"The {name} {fact}."})
        for name, items in facts.items()
        for n, fact in enumerate(items)
    ]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "hotels.jsonl").write_text("\n".join(lines) + "\n")
    settings: Settings = make_settings(tmp_path / "data", backend="extractive", cache_audit_rate=1.0)
    ingest([tmp_path / "docs"], "default", settings, embedder, progress=False)
    pipeline = build_pipeline(settings, embedder)
    try:
        await pipeline.answer("Does the Harbor Hotel have parking?")  # searched within the Harbor Hotel's entries
        again = await pipeline.answer("Does the Harbor Hotel have free parking?")
        assert again.cache.kind == "semantic", again
        await pipeline.audits_settled()
        # The audit's fresh answer is cached where the caller's next ask looks, not in a
        # scope keyed on the entity filter the pipeline planned.
        assert (await pipeline.answer("Does the Harbor Hotel have free parking?")).cache.kind == "exact"
    finally:
        await pipeline.aclose()
