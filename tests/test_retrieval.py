"""Hybrid retrieval, follow-ups, metadata filters, index types, the reranker stage and
`rag eval retrieval` / `rag eval answers`, on real FAISS + SQLite FTS5 and the real model."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from eval.data import load_qa
from eval.retrieval import evaluate_retrieval
from ingest.runner import ingest
from rag.errors import RagError
from rag.pipeline import Pipeline, build_pipeline
from rag.store import CollectionIndex

from .conftest import FIXTURES, ROOT, make_settings, without_digests
from .servers import free_port, serving

HOTELS = FIXTURES / "dstc11_hotels_corpus_slice.jsonl"
HOTEL_QA = FIXTURES / "dstc11_hotels_qa_slice.jsonl"


@pytest.fixture(scope="module")
def hotels_dir(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("hotels")
    ingest([HOTELS], "hotels", make_settings(data_dir), embedder, progress=False)
    return data_dir


def _pipeline(data_dir: Path, embedder, **overrides: object) -> Pipeline:  # type: ignore[no-untyped-def]
    settings = make_settings(data_dir, backend="extractive", collection="hotels", cache_enabled=False, **overrides)
    return build_pipeline(settings, embedder)


def test_hybrid_fusion_beats_dense_and_bm25_alone(hotels_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    items = load_qa(HOTEL_QA)
    mrr = {}
    for mode in ("hybrid", "dense", "lexical"):
        settings = make_settings(hotels_dir, collection="hotels", retrieval_mode=mode)
        mrr[mode] = evaluate_retrieval(None, items, settings, collection="hotels", progress=False)["summary"]["mrr@10"]
    assert mrr["hybrid"] > max(mrr["dense"], mrr["lexical"]), mrr


def test_an_faq_entrys_question_is_a_third_ranking(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    """A reworded question matches the FAQ's question better than its question + answer: the
    questions alone rank too (hybrid only), and go with their entries on a re-ingest."""
    docs = tmp_path / "docs"
    docs.mkdir()
    entries = (FIXTURES / "covid_faq_slice.jsonl").read_text().splitlines()
    (docs / "faq.jsonl").write_text("\n".join(entries) + "\n")
    data_dir = tmp_path / "data"
    ingest([docs], "faq", make_settings(data_dir), embedder, progress=False)
    index = CollectionIndex.load(data_dir / "collections", "faq", model=embedder.name, dimension=384)
    ids, matrix = index.faq_questions()
    assert len(ids) == len(entries) and matrix.shape == (len(entries), 384)  # every title is a question
    index.close()
    items = load_qa(FIXTURES / "covid_faq_queries_slice.jsonl")
    top1 = {
        mode: evaluate_retrieval(
            None, items, make_settings(data_dir, retrieval_mode=mode), collection="faq", progress=False
        )["summary"]["recall@1"]
        for mode in ("hybrid", "dense", "lexical")
    }
    assert top1["hybrid"] > max(top1["dense"], top1["lexical"]), top1
    (docs / "faq.jsonl").write_text("\n".join(entries[:20]) + "\n")
    ingest([docs], "faq", make_settings(data_dir), embedder, progress=False)
    index = CollectionIndex.load(data_dir / "collections", "faq", model=embedder.name, dimension=384)
    ids, _ = index.faq_questions()
    assert len(ids) == 20 and index.has_chunks([int(i) for i in ids])
    index.close()


def test_a_version_written_before_citations_had_urls_still_serves_and_gains_them_in_place(
    tmp_path: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.jsonl").write_text(
        '{"id": "a", "question": "Do gift cards expire?", "answer": "Never.", "url": "https://x.example/a"}\n'
    )
    data_dir = tmp_path / "data"
    ingest([docs], "faq", make_settings(data_dir), embedder, progress=False)
    index = CollectionIndex.load(data_dir / "collections", "faq", model=embedder.name, dimension=384)
    vector = embedder.embed_batch(["do gift cards expire"])[0]
    assert index.search(vector, 1)[0].url == "https://x.example/a"
    version_dir = index.version_dir
    index.close()
    with sqlite3.connect(version_dir / "chunks.sqlite") as db:  # as the releases before wrote it
        db.execute("ALTER TABLE chunks DROP COLUMN url")
        db.execute("ALTER TABLE chunks DROP COLUMN page")
    without_digests(version_dir)
    index = CollectionIndex.load(data_dir / "collections", "faq", model=embedder.name, dimension=384)
    [found] = index.search(vector, 1)
    assert (found.document_id, found.url, found.page) == ("a", "", 0) and index.chunks([found.id])[found.id].url == ""
    lineage = index.lineage
    index.close()
    # The next ingest adds the column in place: same lineage, same ids, nothing embedded again.
    (docs / "more.jsonl").write_text(
        '{"id": "b", "question": "Can I pay by PayPal?", "answer": "Yes.", "url": "https://x.example/b"}\n'
    )
    report = ingest([docs], "faq", make_settings(data_dir), embedder, progress=False)
    assert [Path(s).name for s in report.indexed] == ["more.jsonl"] and len(report.unchanged) == 1
    index = CollectionIndex.load(data_dir / "collections", "faq", model=embedder.name, dimension=384)
    assert index.lineage == lineage and index.chunks([found.id])[found.id].url == ""  # until its file changes
    paypal = index.search(embedder.embed_batch(["can I pay with paypal"])[0], 1)[0]
    assert (paypal.document_id, paypal.url) == ("b", "https://x.example/b")
    index.close()


@pytest.mark.parametrize(
    ("question", "leans"),
    [
        ("does it have parking?", True),
        ("Are their bathrooms adequately sanitized?", True),
        ("and for express delivery?", True),
        ("What about Ireland?", True),
        ("how much?", True),  # too few words of its own
        ("how long does it take?", True),
        ("How long do refunds take?", False),
        ("Thanks. Separate question: can I pay with PayPal?", False),
        ("Is there a minimum spend?", False),  # "there" points at nothing here
        ("Is it possible to cancel after 3 hours?", False),
        ("Anything else I should know?", True),
        ("Even for sale items?", True),
        ("Thanks, that worked! How do I change my email?", False),  # the question is its last sentence
        ("One more question: can I pay by PayPal?", False),
        ("Another question: can I pay by PayPal?", False),  # "another question" points at nothing
        ("Another thing: does it have parking?", True),
        ("Different question: does it have parking?", True),  # ... but "it" still points back
        ("Do you offer same-day delivery?", False),  # whole words only
    ],
)
def test_a_question_leans_on_the_turn_before_only_when_it_points_back(question: str, leans: bool) -> None:
    from rag.conversation import refers_back

    assert refers_back(question) is leans


@pytest.mark.parametrize(
    ("question", "own_subject"),
    [
        ("What about Hearth Points?", True),
        ("and for express delivery?", True),
        ("but is it free?", False),  # "it": the turn before's subject, judged with it alone
        ("and if it's faulty?", False),
        ("and?", False),  # no words of its own
        ("Does it cover fading?", False),  # points back, continues nothing
    ],
)
def test_a_continuation_has_a_subject_of_its_own_unless_it_points_back(question: str, own_subject: bool) -> None:
    from rag.conversation import continues

    assert continues(question) is own_subject


def test_an_entity_is_found_by_its_name_in_any_case() -> None:
    from rag.conversation import standalone

    titles = ["ASHLEY HOTEL", "HOBSONS HOUSE", "Hôtel Écrin"]
    assert standalone("Is there parking at the Ashley Hotel?", None, titles).entity == "ASHLEY HOTEL"
    assert standalone("is breakfast served at hobsons house", None, titles).entity == "HOBSONS HOUSE"
    assert standalone("Does the Hôtel Écrin have a lift?", None, titles).entity == "Hôtel Écrin"


async def test_a_follow_up_retrieves_the_entity_its_history_names(hotels_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    pipeline = _pipeline(hotels_dir, embedder)
    history = [
        {"role": "user", "content": "I need a moderately priced place to stay in the north."},
        {"role": "assistant", "content": "The Ashley Hotel is moderately priced. Shall I book it?"},
    ]
    answer = await pipeline.answer("Are the bathrooms clean?", history=history)
    assert answer.citations and {c.title for c in answer.citations} == {"ASHLEY HOTEL"}
    # The same words with another hotel in the conversation: that hotel's reviews.
    history[1]["content"] = "Hobson's House is moderately priced. Shall I book it?"
    other = await pipeline.answer("Are the bathrooms clean?", history=history)
    assert {c.title for c in other.citations} == {"HOBSONS HOUSE"}
    # Without the conversation the question names no hotel: citations from several.
    alone = await pipeline.answer("Are the bathrooms clean?")
    assert len({c.title for c in alone.citations}) > 1
    # A message that says it starts another topic leaves the conversation's hotel behind; "another
    # thing" goes on about the same one.
    moved_on = await pipeline.answer("Thanks. Different question: are the bathrooms clean?", history=history)
    assert len({c.title for c in moved_on.citations}) > 1, moved_on.citations
    more = await pipeline.answer("Another thing: are the bathrooms clean?", history=history)
    assert {c.title for c in more.citations} == {"HOBSONS HOUSE"}, more.citations
    await pipeline.aclose()


def test_deletes_leave_no_ghost_results_in_either_index(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "keep.md").write_text("# Parking\n\nParking at the hotel costs 12 pounds a night.\n")
    (docs / "gone.md").write_text("# Saunas\n\nThe zebrawood sauna opens at seven every morning.\n")
    settings = make_settings(tmp_path / "data")
    ingest([docs], "default", settings, embedder, progress=False)
    vector = embedder.embed_batch(["When does the zebrawood sauna open?"])[0]
    index = CollectionIndex.load(settings.collections_dir, "default", model=embedder.name, dimension=384)
    for mode in ("dense", "lexical", "hybrid"):
        assert index.search(vector, 1, "zebrawood sauna", mode=mode)[0].document_id == "gone.md"
    index.close()
    (docs / "gone.md").unlink()
    ingest([docs], "default", settings, embedder, progress=False)
    index = CollectionIndex.load(settings.collections_dir, "default", model=embedder.name, dimension=384)
    for mode in ("dense", "lexical", "hybrid"):
        found = index.search(vector, 10, "zebrawood sauna", mode=mode)
        assert all(c.document_id == "keep.md" for c in found), mode
    assert index._db.execute("SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH 'zebrawood'").fetchone() == (0,)
    assert len(index) == 1
    index.close()


def test_each_index_type_round_trips_and_takes_an_update(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(HOTELS, docs / "hotels.jsonl")
    settings = make_settings(tmp_path / "data")
    ingest([docs], "h", settings, embedder, progress=False)  # embedded once: later types reuse the vectors
    questions = ["Is there free parking at Ashley Hotel?", "Do guests like the breakfast at Avalon?"]
    vectors = embedder.embed_batch(questions)

    def top(index: CollectionIndex) -> list[list[int]]:
        # The first five in order: the compressed types re-rank their candidates exactly.
        return [[c.id for c in index.search(v, 5, mode="dense")] for v in vectors]

    exact = top(CollectionIndex.load(settings.collections_dir, "h", model=embedder.name, dimension=384))
    news = {
        "hnsw": ("The rooftop beehives give honey to the bakery.", "Where does the bakery's honey come from?"),
        "sq8": ("Kayaks can be hired from the boathouse by the river.", "Can I rent a kayak?"),
        "ivfpq": ("A telescope on the observatory deck is free for stargazing.", "Is there a telescope?"),
        "flat": ("Chess sets are lent out at the library desk.", "Can I borrow a chess set?"),
    }
    for index_type, (fact, _) in news.items():
        report = ingest([docs], "h", settings, embedder, progress=False, index_type=index_type)
        assert report.index_type == index_type and report.chunks_added == 0  # rebuilt from stored vectors
        index = CollectionIndex.load(settings.collections_dir, "h", model=embedder.name, dimension=384)
        assert index.meta["index_type"] == index_type and len(index) == report.chunks_total
        assert top(index) == exact, index_type
        index.close()
        # An update keeps the type and finds the new document.
        (docs / f"{index_type}.md").write_text(f"# Note\n\n{fact}\n")
        report = ingest([docs], "h", settings, embedder, progress=False)
        assert report.index_type == index_type and report.chunks_added == 1
        index = CollectionIndex.load(settings.collections_dir, "h", model=embedder.name, dimension=384)
        probe = embedder.embed_batch([f"Note {fact}"])[0]  # the new chunk itself must come back
        assert index.search(probe, 1, mode="dense")[0].document_id == f"{index_type}.md"
        index.close()


@pytest.fixture(scope="module")
def hotel_url(hotels_dir: Path, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with serving(hotels_dir, embedder, backend="extractive", collection="hotels") as url:
        yield url


def test_filters_restrict_retrieval_over_http(hotel_url: str) -> None:
    body = {"question": "Is the wifi good?", "filters": {"title": ["AVALON", "CITYROOMZ"]}}
    response = httpx.post(f"{hotel_url}/v1/query", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert {c["title"] for c in response.json()["citations"]} <= {"AVALON", "CITYROOMZ"}
    bad = httpx.post(f"{hotel_url}/v1/query", json={"question": "wifi?", "filters": {"colour": "red"}}, timeout=60)
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "filters.colour" and "title" in error["message"]


async def test_the_reranker_stage_decides_the_order(hotels_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    plain = _pipeline(hotels_dir, embedder)
    reranked = _pipeline(hotels_dir, embedder, reranker="tests.rerankers:Reverse", rerank_pool=8)
    index = plain.get_index("hotels")
    vector = embedder.embed_batch(["Is breakfast included?"])[0]
    pool = plain.retrieve(index, vector, "Is breakfast included?", 8)
    assert [c.id for c in reranked.retrieve(index, vector, "Is breakfast included?", 3)] == [c.id for c in pool][::-1][
        :3
    ]
    with pytest.raises(RagError, match="rerank"):
        _pipeline(hotels_dir, embedder, reranker="tests.rerankers:NoMethod")
    await plain.aclose()
    await reranked.aclose()


def _rag(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_rag_eval_retrieval_prints_every_metric_and_plots(tmp_path: Path) -> None:
    result = _rag("eval", "retrieval", "--corpus", str(HOTELS), "--qa", str(HOTEL_QA), "--json", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "n", "latency_ms"} <= summary.keys()
    assert summary["n"] == 40 and set(summary["latency_ms"]) == {"p50", "p95"}
    assert summary["ndcg@10"] > 0.4  # entity carry-over: the question alone scores ~0.25 here
    assert (tmp_path / "retrieval.png").stat().st_size > 0 and list(tmp_path.glob("retrieval-*.json"))
    assert "warning" not in result.stderr
    # Each question's ranking beside the summary, so a user can check the figures.
    (per_question,) = tmp_path.glob("retrieval-*.questions.jsonl")
    rows = [json.loads(line) for line in per_question.read_text().splitlines()]
    assert len(rows) == 40 and all(r["ranked"] and "recall@1" in r for r in rows)
    assert summary["recall@1"] == pytest.approx(sum(r["recall@1"] for r in rows) / 40, abs=1e-4)


def test_gold_ids_the_corpus_lacks_are_named_not_scored_as_silent_zeros(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    lines = [json.loads(line) for line in HOTEL_QA.read_text().splitlines()[:3]]
    qa.write_text("".join(json.dumps({**line, "gold_passage_ids": ["KB 1"]}) + "\n" for line in lines))
    result = _rag("eval", "retrieval", "--corpus", str(HOTELS), "--qa", str(qa), "--json")
    assert result.returncode == 0, result.stderr
    assert "3 of 3 questions name no gold passage id that the corpus has" in result.stderr, result.stderr
    assert "'KB 1'" in result.stderr


def test_rag_eval_cache_refuses_files_of_the_wrong_shape_in_one_line(tmp_path: Path) -> None:
    result = _rag("eval", "cache", "--corpus", str(HOTELS), "--qa", str(HOTEL_QA))  # passages, not an FAQ
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "needs id, question and answer" in result.stderr and "--pairs" in result.stderr, result.stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"text_a": "a", "text_b": "b", "label": 1})
        + "\n"
        + json.dumps({"text_a": "a", "text_b": "c", "label": "yes"})
        + "\n"
    )
    result = _rag("eval", "cache", "--pairs", str(pairs))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "row 2: label is 'yes'" in result.stderr, result.stderr


def test_rag_eval_answers_reports_abstention_on_unanswerable_questions(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    lines = [json.loads(line) for line in HOTEL_QA.read_text().splitlines()[:4]]
    lines.append(
        {"id": "none-1", "question": "What is the capital of Mongolia?", "answers": [], "gold_passage_ids": []}
    )
    lines.append({"id": "none-2", "question": "How do quasars emit x-rays?", "answers": [], "gold_passage_ids": []})
    qa.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = _rag("eval", "answers", "--corpus", str(HOTELS), "--qa", str(qa), "--backend", "extractive",
                  "--json", "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert {"contains", "f1", "citation_recall", "abstain_rate", "false_abstain_rate", "answerable"} <= summary.keys()
    assert summary["questions"] == 6 and summary["answerable"]["n"] == 4 and summary["abstain_rate"] == 1.0
    assert summary["citation_recall"] is not None


def test_stored_vectors_match_the_faiss_index(hotels_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    index = CollectionIndex.load(hotels_dir / "collections", "hotels", model=embedder.name, dimension=384)
    chunk_id, blob = index._db.execute("SELECT id, vector FROM chunks LIMIT 1").fetchone()
    np.testing.assert_allclose(np.frombuffer(blob, dtype=np.float32), index._index.reconstruct(chunk_id))
    index.close()


def test_rag_eval_index_reports_memory_and_recall_of_each_type() -> None:
    result = _rag("eval", "index", "--n", "5000", "--types", "flat,ivfpq,sq8", "--queries", "30", "--json")
    assert result.returncode == 0, result.stderr
    types = json.loads(result.stdout)["types"]
    assert set(types) == {"flat", "ivfpq", "sq8"}
    for row in types.values():
        assert {"bytes_per_vector", "recall@10", "recall@10_approx", "p50_ms", "p95_ms", "build_s"} <= set(row)
    assert types["flat"]["recall@10"] == 1.0 and not types["flat"]["reranked_from_disk"]
    # Compressed codes in memory; the exact re-rank from disk wins back what the codes lose.
    assert types["ivfpq"]["bytes_per_vector"] < types["sq8"]["bytes_per_vector"] < types["flat"]["bytes_per_vector"] / 3
    assert types["ivfpq"]["recall@10"] > types["ivfpq"]["recall@10_approx"]
    assert types["ivfpq"]["recall@10"] >= 0.95


async def test_a_reranker_that_cannot_rank_keeps_the_hybrid_order(hotels_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    """The likelihood reranker pointed at a port nothing listens on: the request keeps its
    passages in the hybrid order, and the failure is counted (rag eval reports it)."""
    plain = _pipeline(hotels_dir, embedder)
    dead = _pipeline(hotels_dir, embedder, reranker=f"likelihood:http://127.0.0.1:{free_port()}", rerank_pool=8)
    index = plain.get_index("hotels")
    vector = embedder.embed_batch(["Is breakfast included?"])[0]
    expected = [c.id for c in plain.retrieve(index, vector, "Is breakfast included?", 3)]
    assert [c.id for c in dead.retrieve(index, vector, "Is breakfast included?", 3)] == expected
    assert dead.rerank_failures == 1 and plain.rerank_failures == 0
    await plain.aclose()
    await dead.aclose()


def test_likelihood_reranker_shows_faq_entries_by_their_question() -> None:
    """FAQ entries are asked "is this a rewording?"; a list with any other passage is shown
    as passages throughout, so every score in one ranking comes from one prompt form."""
    from rag.rerank import LikelihoodReranker
    from rag.store import RetrievedChunk

    reranker = LikelihoodReranker(f"http://127.0.0.1:{free_port()}")  # contexts() calls nothing
    faq = RetrievedChunk(1, "faq-1", "faq.jsonl", "Can I  return a mattress?", 0, "Can I return a mattress?\nNo.", 0.5)
    page = RetrievedChunk(2, "returns.md", "returns.md", "Returns and refunds", 0, "Returns take 30 days. " * 40, 0.4)
    assert reranker.contexts([faq, faq]) == [LikelihoodReranker.FAQ.format(text="Can I return a mattress?")] * 2
    mixed = reranker.contexts([faq, page])
    assert mixed[0].startswith("Passage: Can I return a mattress?\nNo.") and mixed[1].startswith("Passage: Returns")
    assert len(mixed[1]) < len(page.text)  # the first 600 characters only
    reranker.close()


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("hi", "greeting"),
        ("Hello there!", "greeting"),
        ("thanks, that worked!", "thanks"),
        ("thank you so much", "thanks"),
        ("\U0001f44d", "thanks"),  # an emoji alone is a reaction
        ("ok thanks bye", "bye"),
        ("hi, can i return a lamp", None),  # a request, however it starts
        ("thanks?", None),  # a question mark asks something
        ("Hello, I need help", None),
        ("123456", None),  # an order number
        ("!!!", None),
        ("hi, мой заказ не пришел", None),  # a request in another script
        ("thanks 12345", None),  # an order number
        ("ok 注文が届きません", None),
        ("yes", None),  # an answer to the bot's own question: left to the conversation
        ("Merci beaucoup !", "thanks"),  # courtesy in the languages customers write
        ("Danke schön", "thanks"),
        ("谢谢", "thanks"),
        ("شكرًا", "thanks"),  # with its vowel mark
        ("नमस्ते", "greeting"),
        ("Bonjour", "greeting"),
        ("Guten Tag", "greeting"),
        ("tak", None),  # Polish "yes" (Danish "thanks"): an answer, like "yes", left to the conversation
        ("au revoir", "bye"),
        ("\U0001f44d\U0001f3fd", "thanks"),  # with a skin tone
        ("\u2764\ufe0f", "thanks"),
        ("\U0001f621\U0001f621", None),  # an angry customer wants something, not "You're welcome"
        ("\U0001f44e", None),
        ("\U0001f4e6\u2753", None),  # a parcel, a question mark
        ("ok\uff1f", None),  # a full-width question mark asks too
        ("thanks\u061f", None),  # an Arabic one
        ("great \U0001f44e", None),  # sarcasm: an unfriendly emoji beside courtesy words
        ("ok \U0001f621", None),
        ("thanks \U0001f64f\U0001f3fd", "thanks"),
        ("thanks =)", "thanks"),
        ("thanks \U0001f605", "thanks"),  # a sweat smile is still thanks
    ],
)
def test_a_message_that_asks_nothing_is_small_talk(message: str, kind: str | None) -> None:
    from rag.conversation import small_talk

    assert small_talk(message) == kind


def test_a_long_message_is_searched_by_what_it_asks() -> None:
    from rag.conversation import LONG_MESSAGE_WORDS, focus

    story = "My neighbour told me your shop was great so I ordered a wardrobe last month. " * 6
    assert focus(story + "Do gift cards expire?") == "Do gift cards expire?"
    assert focus("Do gift cards expire? " + story) == "Do gift cards expire?"
    assert focus(story + "so how do i get a refund. thanks") == "so how do i get a refund."  # no question mark
    email = (
        "Still nothing arrived. Also, can I return the sofa if I don't like it?\n\nJane\n"
        "-----Original Message-----\nFrom: support@example.com\n> Can I help you with anything else today? " + story
    )
    assert focus(email) == "Still nothing arrived. Also, can I return the sofa if I don't like it?"  # not the thread
    assert len(focus(story).split()) <= LONG_MESSAGE_WORDS  # asks nothing: its last sentences
    short = "I ordered a rug 3 hours ago and changed my mind. Can I still cancel it?"
    assert focus(short) == short  # a question with its context is itself
    # One that points back keeps the sentence that says what "it" is.
    assert focus(story + "I bought a blender and it broke. How do I cancel it?") == (
        "I bought a blender and it broke. How do I cancel it?"
    )
    assert focus(story + "Why was I charged $12.50 for version 2.1?") == "Why was I charged $12.50 for version 2.1?"
    assert focus("word " * 80 + "can i get a refund").endswith("can i get a refund")  # no punctuation: its end


async def test_contact_details_are_not_what_a_question_is_judged_by(tmp_path: Path, corpus: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    """A customer's e-mail address, a phone number they label as theirs and the card
    placeholders say nothing about what is asked: with them the judge scored the tracking page
    -7.4 ("I don't know"), without them -3.4. The question is kept as written."""
    from rag.conversation import focus

    asked = (
        "Hi, this is Jane Roe, jane.roe@example.com, tel 07700 900123. My order has not arrived yet, how do I track it?"
    )
    assert focus(asked) == "Hi, this is Jane Roe. My order has not arrived yet, how do I track it?"
    assert focus("my card [card number] cvv [security code] failed, can I pay by PayPal?") == "my card cvv failed, can I pay by PayPal?"  # fmt: skip
    assert focus("Is 0800 123 4567 your number?") == "Is 0800 123 4567 your number?"  # a number asked about stays
    settings = make_settings(tmp_path / "data", backend="extractive", cache_enabled=False)
    ingest([corpus], "default", settings, embedder, progress=False)
    answer = await build_pipeline(settings, embedder).answer(asked)
    assert answer.answer_kind == "quoted" and "tracking link" in answer.answer, answer.answer
