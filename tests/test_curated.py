"""Curated answers: pinned by an admin (the API, a thumbs-down's correction, a file), served
first to the question and its rewordings through the cache's own checks, versioned and
audited, kept across re-ingests, and sent to review (not dropped) when a document they cite
changes; a cached answer citing it is invalidated too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from cli import app as cli_app
from ingest.runner import ingest
from rag.pipeline import build_pipeline
from serving.app import create_app

from .conftest import EXAMPLES, make_settings
from .servers import running_server, wait_for_version

PINNED = "Refunds reach your card within 5 to 7 business days of our receiving the return."


def ask(url: str, question: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/query", json={"question": question}, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def call(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    response = httpx.request(method, url, timeout=60, **kwargs)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def pin_refunds(url: str) -> dict[str, Any]:
    body = {"question": "How long do refunds take?", "answer": PINNED, "document_ids": ["returns-and-refunds.md"]}
    return call("POST", f"{url}/v1/curated", json=body)


def test_pin_edit_remove_and_the_history_of_each(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive", index_poll_s=0.1)
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        pinned = pin_refunds(url)
        assert pinned["status"] == "active" and pinned["version"] == 1 and pinned["citations"]
        for question in ("How long do refunds take?", "How long does a refund take?"):
            served = ask(url, question)
            assert (served["answer_kind"], served["answer"]) == ("curated", PINNED), served
            assert served["citations"][0]["document_id"] == "returns-and-refunds.md"
        assert ask(url, "Do gift cards expire?")["answer_kind"] != "curated"  # another question is not its
        history = [{"role": "user", "content": "Do gift cards expire?"}, {"role": "assistant", "content": "No."}]
        follow_up = call("POST", f"{url}/v1/query", json={"question": "How long do refunds take?", "history": history})
        assert follow_up["answer"] == PINNED  # a follow-up word for word the pinned question
        reworded = call(
            "POST", f"{url}/v1/query", json={"question": "How long does a refund take?", "history": history}
        )
        assert reworded["answer_kind"] != "curated"  # a reworded follow-up may lean on its conversation

        # Unrelated documents change: the curated answer stays.
        (corpus / "gift-cards.txt").write_text("Gift cards\n\nGift cards are valid for 5 years.\n")
        wait_for_version(url, ingest([corpus], "default", settings, embedder, progress=False).version)
        assert ask(url, "How long does a refund take?")["answer"] == PINNED

        edited = call("PATCH", f"{url}/v1/curated/{pinned['id']}", json={"answer": "Five to seven business days."})
        assert edited["version"] == 2
        assert ask(url, "How long does a refund take?")["answer"] == "Five to seven business days."
        call("DELETE", f"{url}/v1/curated/{pinned['id']}")
        assert ask(url, "How long does a refund take?")["answer_kind"] != "curated"
        history = call("GET", f"{url}/v1/curated/{pinned['id']}/history")["data"]
        assert [(h["version"], h["action"]) for h in history] == [(1, "create"), (2, "edit"), (3, "remove")]
        assert (
            history[1]["before"]["answer"] == PINNED and history[1]["after"]["answer"] == "Five to seven business days."
        )
        assert all(h["who"] == "anonymous" or h["who"] is None for h in history)  # no keys: the local admin


def test_a_changed_or_deleted_document_sends_its_curated_answers_to_review_and_its_cached_answers_go(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive", index_poll_s=0.1)
    ingest([corpus], "default", settings, embedder, progress=False)
    app = create_app(settings, build_pipeline(settings, embedder))
    with running_server(app) as url:
        cached = ask(url, "Do gift cards expire?")  # a cached answer citing gift-cards.txt
        assert ask(url, "Do gift cards expire?")["cache"]["kind"] == "exact"
        pinned = call(
            "POST", f"{url}/v1/curated",
            json={"question": "Can I use a gift card online?", "answer": "Yes, at checkout.", "document_ids": ["gift-cards.txt"]},
        )  # fmt: skip
        assert ask(url, "Can I use a gift card online?")["answer_kind"] == "curated"

        (corpus / "gift-cards.txt").write_text("Gift cards\n\nFrom March, gift cards expire after 3 years.\n")
        wait_for_version(url, ingest([corpus], "default", settings, embedder, progress=False).version)
        again = ask(url, "Do gift cards expire?")
        assert not again["cache"]["hit"] and "3 years" in again["answer"] and cached["answer"] != again["answer"]
        assert ask(url, "Can I use a gift card online?")["answer_kind"] != "curated"  # not served meanwhile
        review = call("GET", f"{url}/v1/curated", params={"status": "needs_review"})["data"]
        assert [r["id"] for r in review] == [pinned["id"]] and "changed" in review[0]["review_reason"]

        approved = call("POST", f"{url}/v1/curated/{pinned['id']}/approve")
        assert approved["status"] == "active" and approved["citations"][0]["id"] != pinned["citations"][0]["id"]
        assert ask(url, "Can I use a gift card online?")["answer"] == "Yes, at checkout."
        actions = [h["action"] for h in call("GET", f"{url}/v1/curated/{pinned['id']}/history")["data"]]
        assert actions == ["create", "flag", "approve"]

        # A document deleted: its cached answers and curated answers go the same way.
        tracked = ask(url, "How do I track my parcel?")
        assert any(c["document_id"] == "tracking-a-parcel.txt" for c in tracked["citations"]), tracked
        assert ask(url, "How do I track my parcel?")["cache"]["kind"] == "exact"
        pinned = call(
            "POST", f"{url}/v1/curated",
            json={"question": "Where is my parcel?", "answer": "Use the tracking link.", "document_ids": ["tracking-a-parcel.txt"]},
        )  # fmt: skip
        (corpus / "tracking-a-parcel.txt").unlink()
        wait_for_version(url, ingest([corpus], "default", settings, embedder, progress=False).version)
        gone = ask(url, "How do I track my parcel?")
        assert not gone["cache"]["hit"] and all(c["document_id"] != "tracking-a-parcel.txt" for c in gone["citations"])
        assert ask(url, "Where is my parcel?")["answer_kind"] != "curated"
        flagged = call("GET", f"{url}/v1/curated", params={"status": "needs_review"})["data"]
        assert [r["id"] for r in flagged] == [pinned["id"]]


def test_a_thumbs_down_correction_and_a_file_become_curated_answers(tmp_path: Path, embedder: Any) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        answer = ask(url, "Which countries do you ship to?")
        vote = call(
            "POST", f"{url}/v1/feedback",
            json={"answer_id": answer["answer_id"], "rating": "down", "correction": "We ship to the EU, the UK and Norway."},
        )  # fmt: skip
        pinned = call("POST", f"{url}/v1/curated/from-feedback", json={"feedback_id": vote["feedback_id"]})
        cited = [{k: v for k, v in c.items() if k != "fingerprint"} for c in pinned["citations"]]
        assert pinned["source"] == "feedback" and cited == answer["citations"]
        assert all(c["fingerprint"] for c in pinned["citations"])  # of the whole text: a snippet shows its start
        served = ask(url, "Which countries do you ship to?")
        assert (served["answer_kind"], served["answer"]) == ("curated", "We ship to the EU, the UK and Norway.")
        missing = httpx.post(f"{url}/v1/curated/from-feedback", json={"feedback_id": "nope"}, timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "feedback_id"

    lines = tmp_path / "pinned.tsv"
    lines.write_text("Do you sell gift wrap?\tYes: add it at checkout for 3 EUR.\nno tab on this line\n")
    result = CliRunner().invoke(cli_app, ["curated", "import", str(lines), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "pinned 1 curated answers" in result.output and "line 2: needs a question and an answer" in result.output
    again = tmp_path / "pinned.jsonl"  # the same answer again, a new one, and two bad lines
    again.write_text(
        '{"question": "do you sell gift wrap", "answer": "Yes: add it at checkout for 3 EUR."}\n'
        '{"question": "Can I collect in store?", "answer": "Yes, from our Leeds shop.", "document_ids": ["nope.md"]}\n'
        '{"question": 5, "answer": "Five."}\n'
        '{"question": "Do you buy back old sofas?", "answer": "No, we do not."}\n'
        '{"question": "Do you sell rugs?\\u0000", "answer": "Yes."}\n'
        '{"question": "???", "answer": "It would answer every question of punctuation."}\n'
        '{"question": "Do you sell lamps?", "answer": "Yes \\ud800."}\n'
    )
    result = CliRunner().invoke(cli_app, ["curated", "import", str(again), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert "pinned 1 curated answers" in result.output and "5 lines skipped" in result.output, result.output
    assert "line 5: contains a NUL character" in result.output
    assert (
        "line 6: the question has no words" in result.output
        and "line 7: answer holds a lone surrogate" in result.output
    )
    assert "line 2: " in result.output and "nope.md" in result.output and "line 3: needs a question" in result.output
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        served = ask(url, "Do you sell gift wrap?")
        assert (served["answer_kind"], served["answer"]) == ("curated", "Yes: add it at checkout for 3 EUR.")
        listed = call("GET", f"{url}/v1/curated")["data"]
        assert len([c for c in listed if c["question"] == "Do you sell gift wrap?"]) == 1  # imported twice, pinned once
        served = ask(url, "Do you sell gift wrap?")
        call("POST", f"{url}/v1/feedback", json={"answer_id": served["answer_id"], "rating": "down"})  # to review
    result = CliRunner().invoke(cli_app, ["curated", "import", str(again), "--data-dir", str(settings.data_dir)])
    assert "pinned 0 curated answers" in result.output, result.output  # the one in review is not pinned again
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        listed = call("GET", f"{url}/v1/curated")["data"]
        assert [c["status"] for c in listed if c["question"] == "Do you sell gift wrap?"] == ["needs_review"]
        assert ask(url, "Do you sell gift wrap?")["answer_kind"] != "curated"


def test_only_an_admin_key_curates(tmp_path: Path, embedder: Any) -> None:
    from serving.keys import KeyStore

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    keys = KeyStore(settings.data_dir)
    reader, _ = keys.create(["default"])
    admin, _ = keys.create([], admin=True)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        body = {"question": "Do you sell gift wrap?", "answer": "Yes."}
        refused = httpx.post(f"{url}/v1/curated", json=body, headers={"Authorization": f"Bearer {reader}"}, timeout=30)
        assert refused.status_code == 403, refused.text
        made = httpx.post(f"{url}/v1/curated", json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        assert made.status_code == 201 and made.json()["updated_by"], made.text


def test_a_thumbs_down_on_a_curated_answer_sends_it_back_to_review(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        pinned = pin_refunds(url)
        served = ask(url, "How long does a refund take?")
        assert served["answer_kind"] == "curated", served
        vote = {"answer_id": served["answer_id"], "rating": "down", "reason": "Mine took three weeks."}
        down = call("POST", f"{url}/v1/feedback", json=vote)
        assert down["needs_human"] == "thumbs_down" and down["evicted"] >= 1, down
        [flagged] = call("GET", f"{url}/v1/curated", params={"status": "needs_review"})["data"]
        assert flagged["id"] == pinned["id"] and "Mine took three weeks." in flagged["review_reason"]
        history = call("GET", f"{url}/v1/curated/{pinned['id']}/history")["data"]
        assert [h["action"] for h in history] == ["create", "flag"]
        for question in ("How long do refunds take?", "How long does a refund take?"):
            assert ask(url, question)["answer_kind"] != "curated"  # not served until a person looks again
        call("POST", f"{url}/v1/curated/{pinned['id']}/approve")
        assert ask(url, "How long does a refund take?")["answer"] == PINNED


def test_an_edit_that_lost_a_race_changes_nothing_and_leaves_no_history(tmp_path: Path) -> None:
    from serving.curation import CuratedStore
    from serving.support_store import open_support_store

    support = open_support_store(tmp_path, None)
    store = CuratedStore(support.sql)
    item = store.create("default", "How long do refunds take?", PINNED, [], "admin", "api")
    won = store.change(item, "ann", "edit", answer="Five to seven business days.")
    lost = store.change(item, "bob", "edit", answer="A week.")  # read version 1 too: too late
    assert won is not None and lost is None
    assert [(h["version"], h["who"]) for h in store.history(item.id)] == [(1, "admin"), (2, "ann")]
    assert store.get(item.id).answer == "Five to seven business days."  # type: ignore[union-attr]
    support.close()


def test_a_question_has_one_curated_answer_and_it_has_words(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        for question in ("   ", "???"):  # both normalise to "": pinned, it would answer "!!!" and "..." too
            empty = httpx.post(f"{url}/v1/curated", json={"question": question, "answer": "blank"}, timeout=30)
            assert empty.status_code == 400 and empty.json()["error"]["param"] == "question", empty.text
        assert ask(url, "!!!")["answer_kind"] == "no_answer"
        pinned = pin_refunds(url)
        twice = httpx.post(
            f"{url}/v1/curated", json={"question": "how long do refunds take", "answer": "Soon."}, timeout=30
        )
        assert twice.status_code == 409 and pinned["id"] in twice.json()["error"]["message"], twice.text
        other = call("POST", f"{url}/v1/curated", json={"question": "Do gift cards expire?", "answer": "Never."})
        moved = httpx.patch(
            f"{url}/v1/curated/{other['id']}", json={"question": "How long do refunds take?"}, timeout=30
        )
        assert moved.status_code == 409, moved.text  # an edit cannot take another's question either
        nothing = httpx.patch(f"{url}/v1/curated/{pinned['id']}", json={}, timeout=30)
        assert nothing.status_code == 400 and "nothing to change" in nothing.json()["error"]["message"], nothing.text
        assert [h["action"] for h in call("GET", f"{url}/v1/curated/{pinned['id']}/history")["data"]] == ["create"]


def test_rag_cache_clear_puts_the_curated_answers_back(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        pin_refunds(url)
    cleared = CliRunner().invoke(cli_app, ["cache", "clear", "--data-dir", str(settings.data_dir)])
    assert cleared.exit_code == 0 and "1 curated answers put back" in cleared.output, cleared.output
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        assert ask(url, "How long does a refund take?")["answer"] == PINNED
    unknown = CliRunner().invoke(
        cli_app, ["cache", "clear", "--collection", "nope", "--data-dir", str(settings.data_dir)]
    )
    assert unknown.exit_code == 1 and "no collection 'nope'" in unknown.output and "default" in unknown.output

    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("Caf\xe9 open?\tYes.\n".encode("latin-1"))
    result = CliRunner().invoke(cli_app, ["curated", "import", str(latin1), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 1 and "not valid UTF-8 (byte 3) - re-save it as UTF-8" in result.output, result.output


def _pin(url: str, question: str, answer: str, *document_ids: str) -> dict[str, Any]:
    return call(
        "POST", f"{url}/v1/curated", json={"question": question, "answer": answer, "document_ids": list(document_ids)}
    )


def _statuses(url: str) -> dict[str, str]:
    return {c["question"]: c["status"] for c in call("GET", f"{url}/v1/curated")["data"]}


def test_curated_answers_are_checked_by_the_text_they_cite_not_by_chunk_ids(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    """A file moved, another line of a JSONL file edited: the text a curated answer cites is
    still there, under new chunk ids, and it is cited there (no review). A collection deleted
    and rebuilt numbers its chunks from 1 again: an answer whose text changed meanwhile goes to
    review, though its old chunk ids exist again (they hold other text)."""
    from rag.store import collection_dir

    settings = make_settings(tmp_path / "data", backend="extractive", index_poll_s=0.1)
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        cards = _pin(url, "Do gift cards expire?", "Never.", "gift-cards.txt")
        price = _pin(url, "Do you match prices?", "Yes, within 7 days.", "policy-price-match")
        pin_refunds(url)
        (corpus / "cards").mkdir()
        (corpus / "gift-cards.txt").rename(corpus / "cards" / "gift-cards.txt")
        policies = corpus / "store-policies.jsonl"
        policies.write_text(
            policies.read_text().replace("We never sell your data.", "We never sell or rent your data.")
        )
        wait_for_version(url, ingest([corpus], "default", settings, embedder, progress=False).version)
        assert _statuses(url) == dict.fromkeys(
            ["Do gift cards expire?", "Do you match prices?", "How long do refunds take?"], "active"
        )
        moved = call("GET", f"{url}/v1/curated", params={"status": "active"})["data"]
        cited = {c["question"]: {x["document_id"] for x in c["citations"]} for c in moved}
        assert cited["Do gift cards expire?"] == {"cards/gift-cards.txt"}, cited
        recited = {c["id"]: c["citations"] for c in moved}
        assert recited[price["id"]] != price["citations"] and recited[cards["id"]] != cards["citations"]
        assert ask(url, "Do gift cards expire?")["answer"] == "Never."  # served on, from its new place
        history = call("GET", f"{url}/v1/curated/{cards['id']}/history")["data"]
        assert [h["action"] for h in history] == ["create", "recite"]

    returns = corpus / "returns-and-refunds.md"
    returns.write_text(returns.read_text().replace("5 to 7 business days", "10 business days"))
    import shutil

    shutil.rmtree(collection_dir(settings.collections_dir, "default"))  # rebuilt from nothing: ids from 1
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        assert _statuses(url) == {
            "Do gift cards expire?": "active",
            "Do you match prices?": "active",
            "How long do refunds take?": "needs_review",
        }
        assert ask(url, "How long does a refund take?")["answer_kind"] != "curated"
        assert ask(url, "Do you match prices?")["answer"] == "Yes, within 7 days."


def test_a_changed_document_is_not_answered_from_a_copy_of_its_old_text(
    tmp_path: Path, corpus: Path, embedder: Any
) -> None:
    settings = make_settings(tmp_path / "data", backend="extractive", index_poll_s=0.1)
    (corpus / "archive").mkdir()
    (corpus / "archive" / "gift-cards-2024.txt").write_text((corpus / "gift-cards.txt").read_text())
    ingest([corpus], "default", settings, embedder, progress=False)
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        _pin(url, "Do gift cards ever expire?", "Never.", "gift-cards.txt")
        cards = corpus / "gift-cards.txt"
        cards.write_text(cards.read_text().replace("never expire", "expire 12 months after purchase"))
        wait_for_version(url, ingest([corpus], "default", settings, embedder, progress=False).version)
        assert _statuses(url) == {"Do gift cards ever expire?": "needs_review"}
        assert ask(url, "Do gift cards ever expire?")["answer_kind"] != "curated"


def test_curated_edits_that_keep_what_they_cite(tmp_path: Path, corpus: Path, embedder: Any) -> None:
    """A thumbs-down sends back the curated answer it was given on, not others of the same
    text; PATCH can cite other documents; a TSV import over a pinned answer keeps its
    citations (TSV has no column for them)."""
    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([corpus], "default", settings, embedder, progress=False)
    same = "Please contact our support team and they will help you."
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        _pin(url, "Can I book a showroom visit?", same)
        other = _pin(url, "Can I change my delivery address?", same, "placing-an-order.md")
        served = ask(url, "Can I book a showroom visit?")
        assert served["answer_kind"] == "curated", served
        call("POST", f"{url}/v1/feedback", json={"answer_id": served["answer_id"], "rating": "down"})
        assert _statuses(url) == {
            "Can I book a showroom visit?": "needs_review",
            "Can I change my delivery address?": "active",
        }

        recited = call("PATCH", f"{url}/v1/curated/{other['id']}", json={"document_ids": ["tracking-a-parcel.txt"]})
        assert {c["document_id"] for c in recited["citations"]} == {"tracking-a-parcel.txt"}
        unknown = httpx.patch(f"{url}/v1/curated/{other['id']}", json={"document_ids": ["nope.md"]}, timeout=30)
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "document_ids", unknown.text
    tsv = tmp_path / "edit.tsv"
    tsv.write_text("Can I change my delivery address?\tYes, until the order is packed.\n")
    result = CliRunner().invoke(cli_app, ["curated", "import", str(tsv), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0 and "pinned 1 curated answers" in result.output, result.output
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        (edited,) = [c for c in call("GET", f"{url}/v1/curated")["data"] if c["id"] == other["id"]]
        assert edited["answer"] == "Yes, until the order is packed." and edited["citations"] == recited["citations"]


def test_a_citation_kept_before_fingerprints_is_never_re_cited_by_its_snippet(tmp_path: Path, embedder: Any) -> None:
    """A snippet shows a passage's first 300 characters: the same start with a change after it
    is another passage. Without a fingerprint, a citation whose chunk is gone goes to review."""
    from rag.curated import fingerprinted, recite
    from rag.store import CollectionIndex

    settings = make_settings(tmp_path / "data", backend="extractive")
    ingest([EXAMPLES], "default", settings, embedder, progress=False)
    index = CollectionIndex.load(settings.collections_dir, "default", model=embedder.name, dimension=embedder.dimension)
    (chunk,) = index.document_chunks("gift-cards.txt", 1)
    cited = {"id": chunk.id, "document_id": chunk.document_id, "source": chunk.source, "title": chunk.title,
             "text": chunk.text[:300], "score": 1.0}  # fmt: skip
    from rag.wire import Citation

    cited["text"] = Citation.from_chunk(chunk).text
    assert recite(index, [cited]) == [cited]  # held where it was: it stands
    moved = {**cited, "id": 999_999}  # its chunk went (re-chunked, moved)
    assert recite(index, [moved]) is None  # no fingerprint: to review, not re-cited by its start
    (printed,) = fingerprinted(index, [cited])
    again = recite(index, [{**printed, "id": 999_999}])
    assert again is not None and again[0]["id"] == chunk.id  # the fingerprint finds it again
    index.close()
