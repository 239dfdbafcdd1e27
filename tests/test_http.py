"""The whole path over real HTTP: uvicorn on 127.0.0.1, real index, real cache."""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.pipeline import build_pipeline
from serving.app import create_app

from .conftest import FIXTURES, files_holding, make_pdf, make_settings
from .servers import query_events, running_server, serving, wait_for_version


@pytest.fixture(scope="module")
def base_url(example_data_dir: Path, embedder) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with serving(example_data_dir, embedder, backend="extractive") as url:
        yield url


def ask(base_url: str, question: str, **extra: object) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{base_url}/v1/query", json={"question": question, **extra}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_answer_cites_the_document_that_holds_it(base_url: str) -> None:
    body = ask(base_url, "How long is the password reset link valid?")
    assert body["citations"][0]["document_id"] == "password-reset.html"
    assert "30 minutes" in body["answer"]
    citation = body["citations"][0]
    assert set(citation) == {"id", "document_id", "source", "title", "text", "score", "url", "page"}
    assert citation["url"] == "" and citation["page"] is None  # no address of its own (no canonical link), no pages
    assert (
        citation["title"] == "Resetting your password" and citation["source"] == "password-reset.html"
    )  # relative to the folder ingested, never a path on the server
    assert body["cache"] == {"hit": False, "kind": None, "similarity": None}
    assert {"embed", "cache", "retrieve", "support", "generate", "total"} <= set(body["timings_ms"])
    assert body["timings_ms"]["support"] > 0  # the judge read the sentences: the miss's biggest stage
    assert body["usage"] == {}  # quoted: no model wrote it
    _, events = query_events(base_url, "How long is the password reset link valid?", timeout=60)
    assert set(events[-1][1]) == set(body)  # the stream's done event is the same response
    _, events = query_events(base_url, "Is Klarna an option at checkout?", timeout=60)  # a streamed miss
    done = events[-1][1]["timings_ms"]
    assert done["first_token"] == done["total"] and done["support"] > 0  # a quote is sent whole, at the end


def test_same_question_again_is_an_exact_hit(base_url: str) -> None:
    first = ask(base_url, "Which payment methods do you accept?")
    second = ask(base_url, "which payment methods do you accept")
    assert second["cache"] == {"hit": True, "kind": "exact", "similarity": 1.0}
    assert second["answer"] == first["answer"] and second["citations"] == first["citations"]
    assert second["timings_ms"]["embed"] == 0.0 and second["timings_ms"]["generate"] == 0.0


def test_reworded_question_is_a_semantic_hit(base_url: str) -> None:
    first = ask(base_url, "How long do refunds take?")
    reworded = ask(base_url, "How long does a refund take?")
    assert reworded["cache"]["hit"] is True and reworded["cache"]["kind"] == "semantic"
    assert reworded["cache"]["similarity"] >= 0.9
    assert reworded["answer"] == first["answer"]


def test_lexically_similar_but_different_question_is_not_a_hit(base_url: str) -> None:
    ask(base_url, "how do I cancel my order")
    other = ask(base_url, "how do I place an order")
    assert other["cache"]["hit"] is False
    assert other["citations"][0]["document_id"] == "placing-an-order.md"


def test_question_outside_the_documents_says_so(base_url: str) -> None:
    body = ask(base_url, "Who won the football world cup in 1966?")
    assert body["answer"] == "I don't know from these documents." and body["citations"] == []


def test_top_k_limits_citations(base_url: str) -> None:
    body = ask(base_url, "What does the warranty cover?", top_k=1)
    assert len(body["citations"]) == 1 and body["citations"][0]["document_id"] == "warranty.pdf"


def test_health_and_readiness(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base_url}/readyz").json()
    assert ready["status"] == "ready" and ready["chunks"] > 10 and ready["backend"] == "extractive"


def test_reingest_invalidates_cached_answers(tmp_path: Path, corpus: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    from ingest.runner import ingest

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        before = ask(url, "Do gift cards expire?")
        assert "never expire" in before["answer"]
        assert ask(url, "Do gift cards expire?")["cache"]["hit"] is True
        ask(url, "Which payment methods do you accept?")
        (corpus / "gift-cards.txt").write_text("Gift cards\n\nFrom March, gift cards expire after 3 years.\n")
        report = ingest([corpus], "default", settings, embedder, progress=False)
        wait_for_version(url, report.version)  # the running server's watcher swaps it in
        after = ask(url, "Do gift cards expire?")
        assert after["cache"]["hit"] is False and "3 years" in after["answer"]
        # The question's new answer serves its rewordings: the old one is no rival.
        reworded = ask(url, "Do gift cards ever expire?")
        assert reworded["cache"]["kind"] == "semantic" and "3 years" in reworded["answer"], reworded
        # Answers built on documents that did not change survive the re-ingest.
        assert ask(url, "which payment methods do you accept")["cache"]["kind"] == "exact"
        assert ask(url, "Which payment methods are accepted?")["cache"]["kind"] == "semantic"
        # An answer whose documents did not change, but whose question a new document
        # answers (the content team fixed it in another article), is answered again.
        link = "How long is the password reset link valid?"
        assert "30 minutes" in ask(url, link)["answer"] and ask(url, link)["cache"]["kind"] == "exact"
        (corpus / "security-update.md").write_text(
            "# Security update\n\nFrom 1 May the password reset link is valid for 2 hours instead of 30 minutes.\n"
        )
        report = ingest([corpus], "default", settings, embedder, progress=False)
        wait_for_version(url, report.version)
        fixed = ask(url, link)
        assert fixed["cache"]["hit"] is False and "2 hours" in fixed["answer"], fixed
        assert "security-update.md" in {c["document_id"] for c in fixed["citations"]}
        # Its rewordings get the new answer from the cache: the old one is no rival.
        reworded = ask(url, "How long is the password reset link valid for?")
        assert reworded["cache"]["kind"] == "semantic" and "2 hours" in reworded["answer"], reworded
        assert ask(url, "Which payment methods do you accept?")["cache"]["kind"] == "exact"  # nothing new for it


def test_an_exported_help_centre_page_is_answered_from_its_article_and_cited_by_its_address(
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    from ingest.runner import ingest

    docs = tmp_path / "export"
    docs.mkdir()
    shutil.copy(FIXTURES / "exports" / "helpdesk-article.html", docs / "360011111103-plans.html")
    (docs / "faq.csv").write_text(
        "question,answer,url\nIs there a free trial?,Yes: 30 days on any plan.,https://help.ledgerly.io/trial\n"
    )
    (docs / "FAQ.xlsx").write_bytes(b"PK\x03\x04")
    filler = [f"Clause {n}: the account owner may change the billing contact at any time." for n in range(1, 9)]
    terms = [filler, filler, ["Data retention: invoices are kept for 7 years after an account is closed."]]
    (docs / "terms.pdf").write_bytes(make_pdf(terms))
    settings = make_settings(tmp_path / "data", backend="extractive")
    report = ingest([docs], "default", settings, embedder, progress=False)
    assert [why for src, why in report.failed if src.endswith("FAQ.xlsx")] == [
        "a spreadsheet: save it as CSV (UTF-8) with question and answer columns - unsupported file type '.xlsx' "
        "(supported: .txt, .md, .markdown, .html, .htm, .pdf, .jsonl, .csv)"
    ]
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        price = ask(url, "What does the Growth plan cost per month?")
        assert "£29" in price["answer"] and "cookie" not in price["answer"].lower(), price
        assert price["citations"][0]["url"] == (
            "https://help.ledgerly.io/hc/en-us/articles/360011111103-Ledgerly-plans-and-pricing"
        )
        trial = ask(url, "do you have a free trial")
        assert "30 days" in trial["answer"] and trial["citations"][0]["url"] == "https://help.ledgerly.io/trial"
        assert price["citations"][0]["page"] is None  # a web page has no pages
        kept = ask(url, "how long do you keep my invoices after I close my account?")
        assert "7 years" in kept["answer"], kept
        assert (kept["citations"][0]["source"], kept["citations"][0]["page"]) == ("terms.pdf", 3)


def test_follow_up_uses_its_history_and_bypasses_the_cache(base_url: str) -> None:
    history = [
        {"role": "user", "content": "Tell me about your gift cards"},
        {"role": "assistant", "content": "They come as e-gift cards or printed cards."},
    ]
    first = ask(base_url, "Do they expire?", history=history)
    assert first["citations"][0]["document_id"] == "gift-cards.txt" and "never expire" in first["answer"]
    again = ask(base_url, "Do they expire?", history=history)
    assert again["cache"]["hit"] is False  # never keyed on the last message alone
    bare = ask(base_url, "Do they expire?")  # without history: nothing was stored under these words
    assert bare["cache"]["hit"] is False
    # A follow-up of a follow-up reaches back to the turn that says what the talk is about ("it"
    # after "And on lamps?" is the warranty): searched with "And on lamps?" alone, it abstained.
    warranty = [
        {"role": "user", "content": "How long is the warranty on furniture?"},
        {"role": "assistant", "content": "2 years."},
        {"role": "user", "content": "And on lamps?"},
        {"role": "assistant", "content": "1 year."},
    ]
    fading = ask(base_url, "Does it cover sun fading?", history=warranty)
    assert "fading caused by direct sunlight" in fading["answer"], fading
    # A bot's opening greeting is no conversation to lean on: the first question is a first
    # question, answered from the cache like any other (it always missed).
    alone = ask(base_url, "How long is the password reset link valid?")
    for opening in (
        [{"role": "assistant", "content": "Hi! How can I help you today?"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! What can I do for you?"}],
    ):
        greeted = ask(base_url, "How long is the password reset link valid?", history=opening)
        assert greeted["cache"]["hit"] is True and greeted["answer"] == alone["answer"], greeted
    # A follow-up about a subject of its own is answered about it first, not with the turn before's
    # answer ("Gift cards never expire ..." came first, the points' 24 months after it).
    gift_cards = [{"role": "user", "content": "Do gift cards expire?"}, {"role": "assistant", "content": "No."}]
    points = ask(base_url, "What about Hearth Points?", history=gift_cards)
    assert points["citations"][0]["document_id"] == "loyalty-program.html", points
    assert "24 months" in points["answer"] and "Gift cards never expire" not in points["answer"], points


def test_a_question_of_a_new_topic_is_answered_alone_not_from_the_turn_before(base_url: str) -> None:
    history = [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "Use Forgot password on the sign-in page."},
    ]
    moved_on = ask(base_url, "Thanks. Separate question: can I pay with PayPal?", history=history)
    assert moved_on["citations"][0]["document_id"] == "payment-methods.md", moved_on  # not the reset article
    refunds = ask(base_url, "How long do refunds take?", history=history)
    assert "5 to 7 business days" in refunds["answer"], refunds
    greeted = ask(base_url, "Do you ship to Canada?", history=[{"role": "user", "content": "hi"}])
    alone = ask(base_url, "Do you ship to Canada?")
    assert (greeted["answer"], greeted["answer_kind"]) == (alone["answer"], alone["answer_kind"])
    follow_up = ask(base_url, "how long is it valid?", history=history)  # "it": the reset link
    assert "30 minutes" in follow_up["answer"], follow_up
    gift_cards = [{"role": "user", "content": "Do gift cards expire?"}, {"role": "assistant", "content": "No."}]
    balance = ask(base_url, "How do I check the balance?", history=gift_cards)  # alone it finds nothing
    assert balance["citations"] and balance["citations"][0]["document_id"] == "gift-cards.txt", balance
    # A message that asks nothing gets a courteous reply: not the reset article again, and not an
    # "I don't know" handed to the help desk.
    for courtesy, reply in (
        ("thanks, that worked!", "You're welcome"),
        ("hi", "Hi!"),
        ("\U0001f44d", "You're welcome"),
    ):
        said = ask(base_url, courtesy, history=history)
        assert said["answer_kind"] == "small_talk" and said["answer"].startswith(reply), said
        assert not said["citations"] and said["needs_human"] is None, said
    # ... but what the turn before finds must answer the question too: not its own topic again.
    for elsewhere in ("What is the capital of Mongolia?", "¿Cuánto tarda el reembolso?"):
        off_topic = ask(base_url, elsewhere, history=gift_cards)
        assert off_topic["answer_kind"] == "no_answer" and not off_topic["citations"], off_topic


def test_a_question_as_long_as_allowed_is_answered_not_a_500(base_url: str) -> None:
    # A customer pastes their whole story: the judge reads the question cut to fit beside each sentence.
    story = "I bought a sofa last month and the delivery was late and the fabric is torn on one side. " * 20
    body = ask(base_url, (story + "How do I report damaged items?")[-2000:])
    assert body["citations"] or body["answer_kind"] == "no_answer", body
    # It is searched, judged and cached by what it asks: the same story with another question
    # is another question, not a near duplicate of the first (the embedder reads 256 tokens).
    story = "My neighbour told me your shop was great so I ordered a wardrobe, and it came two days late. " * 10
    expire = ask(base_url, story + "Do gift cards expire?")
    assert "never expire" in expire["answer"], expire
    paypal = ask(base_url, story + "Can I pay with PayPal?")
    assert not paypal["cache"]["hit"] and paypal["citations"][0]["document_id"] == "payment-methods.md", paypal
    # Full-width letters (an East Asian keyboard) and invisible characters read as plain ones.
    wide = ask(base_url, "\uff23\uff41\uff4e\u3000\uff29\u3000\uff50\uff41\uff59 with \ufeffApple\u200b Pay\uff1f")
    assert wide["citations"] and wide["citations"][0]["document_id"] == "payment-methods.md", wide


def test_eval_latency_counts_refused_requests_and_goes_on(base_url: str) -> None:
    from eval.data import QAItem
    from eval.latency import measure_latency

    items = [QAItem("1", "How long do refunds take?", []), QAItem("2", "Do gift cards expire?", [])]
    served = measure_latency(base_url, items, "default", progress=False)
    assert "errors" not in served and sum(kind["n"] for kind in served.values()) == 4
    refused = measure_latency(base_url, items, "no-such-collection", progress=False)
    assert set(refused) == {"errors"} and refused["errors"]["by_status"] == {"404": 4}
    assert "collection_not_found" in refused["errors"]["first"]


def test_a_bug_mid_stream_still_ends_with_the_error_shape(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: keeping the answer fails with a non-service error after the tokens."""
    import serving.openai_compat
    import serving.query

    def broken(*args: object) -> None:
        raise RuntimeError("support store bug")

    monkeypatch.setattr(serving.query, "remember", broken)
    monkeypatch.setattr(serving.openai_compat, "remember", broken)
    _, events = query_events(base_url, "Do gift cards expire?", timeout=60)
    assert events[-1][0] == "error" and events[-1][1]["error"]["code"] == "internal_error", events
    body = {"model": "default", "stream": True, "messages": [{"role": "user", "content": "Do gift cards expire?"}]}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and '"internal_error"' in lines[-2], lines[-3:]


MISSES = [
    "How long do refunds take?", "Do gift cards expire?", "How do I reset my password?", "Can I pay with Klarna?",
    "How long is the warranty on a sofa?", "Do you ship to Norway?", "How do I track my parcel?",
    "Can I cancel my order?", "How do I earn Hearth Points?",
]  # fmt: skip


def test_a_cache_write_held_up_by_another_process_holds_up_no_other_request(
    tmp_path: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    """Another process (a second worker, `rag cache clear`) holds the response cache's write
    lock: the requests that need the cache wait for it (a hit too: a read records its use),
    each alone in a thread; the event loop serves the rest (health checks first)."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    from ingest.runner import ingest

    from .conftest import EXAMPLES

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        ask(url, "What is the phone number?")  # the cache's files exist
        other = sqlite3.connect(settings.cache_dir / "entries" / "cache.db", timeout=0, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # the other process's write, in progress
        try:
            with ThreadPoolExecutor(len(MISSES)) as pool:
                waiting = [pool.submit(ask, url, q) for q in MISSES]  # misses: their answers are stored
                time.sleep(4.0)  # they reach the store and wait for the lock (a miss: ~0.2 s of work)
                assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # the loop serves
                # ...and the threads that the rest uses (more misses wait than the default pool has)
                assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
                assert not any(w.done() for w in waiting)  # still waiting for the lock, alone
                other.execute("COMMIT")
                assert "5 to 7 business days" in waiting[0].result(timeout=60)["answer"]
                assert all(w.result(timeout=60)["answer"] for w in waiting)
        finally:
            other.close()
        assert ask(url, "How long do refunds take?")["cache"]["kind"] == "exact"  # and it was stored


def test_a_card_number_in_a_question_is_never_kept(base_url: str, example_data_dir: Path) -> None:
    import sqlite3
    import time

    card = "4111 1111 1111 1111"
    body = ask(base_url, f"my card {card} was charged twice, how long do refunds take?")
    assert "5 to 7 business days" in body["answer"], body  # read without it, the question is answered
    chat = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={
            "model": "default",
            "messages": [{"role": "user", "content": "card 4111111111111111 charged: do gift cards expire?"}],
        },
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    ask(base_url, "card 4111.1111.1111.1111 12/25 cvv 123 charged twice: do you ship to Norway?")
    number = {"type": "text", "text": 12345}  # a text part whose text is not text
    parts = {"model": "default", "messages": [{"role": "user", "content": [number]}]}
    refused = httpx.post(f"{base_url}/v1/chat/completions", json=parts, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages", refused.text
    carded = httpx.get(f"{base_url}/healthz", headers={"X-Request-ID": "4111111111111111"}, timeout=30)
    assert carded.headers["x-request-id"] != "4111111111111111"  # not kept as the request's id, nor logged
    deadline = time.monotonic() + 10
    while True:  # the answer log is written in the background
        with sqlite3.connect(example_data_dir / "support.sqlite") as db:
            kept = [q for (q,) in db.execute("SELECT question FROM answers WHERE question LIKE '%charged%'")]
        if len(kept) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(kept) >= 3 and all("[card number]" in q and "1111" not in q for q in kept), kept
    assert any("cvv [security code]" in q for q in kept), kept
    assert files_holding(example_data_dir / "cache", "4111") == []
