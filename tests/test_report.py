"""`rag report` and the admin page's report: per-day rates and latency from the support
store, the unanswered questions grouped by meaning, the answers voted down."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app as cli_app
from serving.report import build_report
from serving.support_store import AnswerRecord, Feedback, open_support_store

DAY = 86_400


def _answer(n: int, when: float, question: str, kind: str = "quoted", cached: str | None = None) -> AnswerRecord:
    citations = [] if kind == "no_answer" else [{"id": n, "document_id": "d.md", "title": "D", "text": "t"}]
    return AnswerRecord(
        f"a{n}", when, "default", None, question, "It is so." if kind != "no_answer" else "I don't know.", kind,
        cached, 0.95 if cached else None, None, None, "g", 10.0 * (n % 10 + 1), None, citations,
    )  # fmt: skip


def _fill(store: Any, now: float) -> None:
    unanswered = [
        "Do you offer a student discount?", "Is there a discount for students?", "student discount?",
        "Can I bring my dog into the store?", "Are dogs allowed in your shops?",
        "Do you offer a student discount?",
    ]  # fmt: skip
    for n, question in enumerate(unanswered):
        store.record(_answer(n, now - 2 * DAY, question, "no_answer"))
    for n in range(10, 20):  # yesterday: 10 answers, 4 cache hits, 2 voted down (one of them twice)
        store.record(_answer(n, now - DAY, f"Question {n}?", cached="exact" if n < 14 else None))
    store.flush()
    for n in (10, 11, 11):
        store.add_feedback(Feedback(f"a{n}", "default", "down", "wrong", None, None))
    store.add_feedback(Feedback("a12", "default", "up", None, None, None))


def _check(report: dict[str, Any]) -> None:
    assert report["answers"] == 16
    older, newer = report["days"]
    assert (older["answers"], older["abstention_rate"], older["resolution_rate"]) == (6, 1.0, 0.0)
    assert (newer["answers"], newer["resolution_rate"], newer["voted_down"], newer["cache_hit_rate"]) == (
        10,
        0.8,
        2,
        0.4,
    )
    assert newer["p50_ms"] == 55.0 and newer["p95_ms"] > newer["p50_ms"]
    groups = [(g["count"], sorted(g["examples"])) for g in report["unanswered"]]
    assert groups[0][0] == 4 and "Is there a discount for students?" in groups[0][1], groups
    assert groups[1] == (2, ["Are dogs allowed in your shops?", "Can I bring my dog into the store?"]), groups
    assert {d["answer_id"] for d in report["voted_down"]} == {"a10", "a11"} and len(report["voted_down"]) == 3
    assert report["voted_down"][0]["citations"][0]["document_id"] == "d.md"


def test_the_report_counts_each_day_and_groups_unanswered_questions_by_meaning(tmp_path: Path, embedder: Any) -> None:
    store = open_support_store(tmp_path, None)
    now = time.time()
    empty = build_report(store, embedder, "default", now - 7 * DAY)  # nothing asked yet
    assert (empty["answers"], empty["days"], empty["unanswered"], empty["resolution_rate"]) == (0, [], [], None)
    _fill(store, now)
    _check(build_report(store, embedder, "default", now - 7 * DAY))
    store.close()

    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli_app, ["report", "--data-dir", str(tmp_path), "--collection", "default", "--json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["answers"] == 16
    assert (out / "report.json").stat().st_mode & 0o077 == 0  # customers' words: this user's alone
    assert (out / "report-rates.png").stat().st_size > 1000 and (out / "report-latency.png").stat().st_size > 1000
    week = ["report", "--data-dir", str(tmp_path), "--since", "2026-12-01", "--until", "2026-12-08"]
    result = CliRunner().invoke(cli_app, week)  # --until is the day after the last
    assert result.exit_code == 0 and "2026-12-01 to 2026-12-07:" in result.output, result.output
    backwards = ["report", "--data-dir", str(tmp_path), "--since", "2026-12-07", "--until", "2026-12-06"]
    result = CliRunner().invoke(cli_app, backwards)
    assert result.exit_code == 1 and "no days from 2026-12-07" in result.output, result.output
    typo = CliRunner().invoke(cli_app, ["report", "--data-dir", str(tmp_path), "--collection", "defualt"])
    assert typo.exit_code == 0 and "no collection 'defualt' here and no answers from it" in typo.output, typo.output
    result = CliRunner().invoke(cli_app, ["report", "--data-dir", str(tmp_path), "--collection", "default"])
    assert "no collection" not in result.output, result.output  # answers from it: it was there
    assert "voted down: 3\n  Question 11? -> It is so. (wrong)\n" in result.output, result.output  # what, not a count


def test_the_report_reads_postgresql_the_same(tmp_path: Path, embedder: Any, database_url: str) -> None:
    from serving.database import Database

    database = Database(database_url).open()
    store = open_support_store(tmp_path, database)
    try:
        now = time.time()
        _fill(store, now)
        _check(build_report(store, embedder, "default", now - 7 * DAY))
    finally:
        store.close()
        database.close()


def test_rag_bench_admin_draws_the_page_over_a_filled_store(tmp_path: Path) -> None:
    from eval.admin_bench import run_admin_bench

    from .conftest import EXAMPLES, make_settings

    result = run_admin_bench(EXAMPLES, make_settings(tmp_path / "unused"), answers=3000, loads=1)
    assert len(result["page_load_ms"]) == 1 and result["unanswered_groups_shown"] >= 1, result


def test_answers_queued_while_the_database_is_locked_are_written_once_it_is_free(tmp_path: Path) -> None:
    import sqlite3

    from serving.support_store import SupportStore, _Sqlite

    path = tmp_path / "support.sqlite"
    store = SupportStore(_Sqlite(path, timeout_s=0.05), flush_s=3600)  # flushed by hand here
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    store.record(_answer(1, time.time(), "How long do refunds take?"))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.flush()
    store.record(_answer(2, time.time(), "Do gift cards expire?"))
    blocker.execute("ROLLBACK")
    blocker.close()
    assert store.answer("a1") is not None and store.answer("a2") is not None  # neither was lost
    store.close()


def test_an_answer_held_while_the_disk_refuses_it_can_be_voted_on_and_the_log_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk (here: another process holding the write lock): the answer a customer just
    got is still found for their vote, and the writer says it cannot write once, not 5 times
    a second."""
    import logging
    import sqlite3

    from serving.support_store import SupportStore, _Sqlite

    path = tmp_path / "support.sqlite"
    store = SupportStore(_Sqlite(path, timeout_s=0.01), flush_s=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("PRAGMA journal_mode=WAL")
    blocker.execute("BEGIN IMMEDIATE")  # writes refused, reads still served (WAL), as on a full disk
    with caplog.at_level(logging.WARNING, logger="rag.serving"):
        store.record(_answer(7, time.time(), "How long do refunds take?"))
        time.sleep(1.0)  # about 20 write attempts
        held = store.answer("a7")
        assert held is not None and held.question == "How long do refunds take?"
        assert store.unwritten() == 1
        failures = [r for r in caplog.records if "answers not written yet" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info, [r.getMessage() for r in caplog.records]
        blocker.execute("ROLLBACK")
        blocker.close()
        deadline = time.monotonic() + 5
        while store.unwritten() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert store.unwritten() == 0 and store.answer("a7") is not None
    assert any("writing again" in r.getMessage() for r in caplog.records)
    store.close()


def test_an_answer_the_database_will_never_take_is_given_up_and_holds_back_no_other(database_url: str) -> None:
    from serving.database import Database
    from serving.support_store import SupportStore, _Postgres

    db = Database(database_url).open()
    store = SupportStore(_Postgres(db), flush_s=3600)  # flushed by hand here
    try:
        store.record(_answer(1, time.time(), "How long do refunds take?"))
        store.record(_answer(2, time.time(), "Do gift\x00 cards expire?"))  # PostgreSQL text holds no NUL
        store.record(_answer(3, time.time(), "Which payment methods do you accept?"))
        store.flush()
        assert store.answer("a1") is not None and store.answer("a3") is not None
        assert store.answer("a2") is None
        store.record(_answer(4, time.time(), "How do I track my parcel?"))
        assert store.answer("a4") is not None  # the next ones are written too
    finally:
        store.close()
        db.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_votes_on_an_answer_make_one_verdict_on_either_database(engine: str, tmp_path: Path, request: Any) -> None:
    from serving.database import Database
    from serving.support_store import SupportStore, _Postgres, _Sqlite

    db = Database(request.getfixturevalue("database_url")).open() if engine == "postgres" else None
    store = SupportStore(_Postgres(db) if db else _Sqlite(tmp_path / "support.sqlite"), flush_s=3600)
    try:
        assert [store.hit_verdict("a1", r) for r in ("up", "up", "down", "down", "up")] == [
            "first", None, "flip", None, None  # counted once; turned wrong once; never back
        ]  # fmt: skip
        assert [store.hit_verdict("a2", r) for r in ("down", "up")] == ["first", None]
    finally:
        store.close()
        if db is not None:
            db.close()


def test_a_customers_words_reach_the_operators_terminal_printable_and_cut() -> None:
    from cli.report import _shown

    assert _shown("do gift\x1b[31m cards\u202e expire?\n\tplease", 200) == "do gift[31m cards expire? please"
    assert _shown("a" * 2000, 200) == "a" * 197 + "..."
