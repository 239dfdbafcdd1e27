"""`rag report`: the support loop's figures for a time range (what the admin page shows)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import Collection, DataDir, fail, load_settings, run_or_fail


def _ts(day: str | None, name: str) -> float | None:
    if day is None:
        return None
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        fail(f"--{name} is a day as YYYY-MM-DD, not {day!r}")
        raise


def _shown(text: object, limit: int) -> str:
    """A customer's words on an operator's terminal: printable characters only (no escape
    sequences, no bidirectional controls turning the line around), on one line, cut at ``limit``."""
    plain = " ".join("".join(c if c.isprintable() else " " if c.isspace() else "" for c in str(text)).split())
    return plain if len(plain) <= limit else plain[: limit - 3] + "..."


def report(
    collection: Collection = None,
    since: Annotated[Optional[str], typer.Option(help="First day, YYYY-MM-DD (UTC); default 30 days ago.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Day after the last, YYYY-MM-DD (UTC); default now.")] = None,
    all_collections: Annotated[bool, typer.Option("--all", help="Every collection together.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Write report.json and PNG charts here.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Per day: resolution rate (answered, not voted down), abstentions, cache hits, p50/p95
    latency; the unanswered questions grouped by meaning; the answers voted down."""
    from rag.embedder import SentenceTransformerEmbedder
    from serving.database import Database
    from serving.report import build_report, plot_report
    from serving.support_store import open_support_store

    settings = load_settings(data_dir=data_dir, collection=collection)
    database = Database(settings.database_url).open() if settings.database_url else None
    store = open_support_store(settings.data_dir, database)
    try:
        embedder = SentenceTransformerEmbedder.from_settings(settings)
        scope = None if all_collections else settings.collection
        result = run_or_fail(lambda: build_report(store, embedder, scope, _ts(since, "since"), _ts(until, "until")))
    finally:
        store.close()
        if database is not None:
            database.close()
    if scope is not None and not result["answers"]:
        from rag.store import list_collections

        if scope not in list_collections(settings.collections_dir):
            typer.secho(
                f"warning: no collection {scope!r} here and no answers from it (a typo?); collections: "
                f"{', '.join(list_collections(settings.collections_dir)) or 'none'}",
                fg=typer.colors.YELLOW, err=True,
            )  # fmt: skip
    if out is not None:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Customers' words: readable by this user only, whatever the umask.
        fd = os.open(out / "report.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        charts = plot_report(result, out)
        typer.secho(f"wrote {out / 'report.json'}, " + ", ".join(map(str, charts)), err=True, dim=True)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    typer.echo(f"{result['collection'] or 'all collections'}, {result['since']} to {result['last_day']}: "
               f"{result['answers']} answers, resolved {pct(result['resolution_rate'])}, abstained "
               f"{pct(result['abstention_rate'])}, cache hits {pct(result['cache_hit_rate'])}")  # fmt: skip
    typer.echo(f"{'day':<12}{'answers':>8}{'resolved':>10}{'abstained':>10}{'hits':>8}{'p50 ms':>9}{'p95 ms':>9}")
    for d in result["days"]:
        typer.echo(f"{d['day']:<12}{d['answers']:>8}{pct(d['resolution_rate']):>10}{pct(d['abstention_rate']):>10}"
                   f"{pct(d['cache_hit_rate']):>8}{d['p50_ms']:>9}{d['p95_ms']:>9}")  # fmt: skip
    for group in result["unanswered"][:10]:
        typer.echo(f"unanswered x{group['count']}: {_shown(group['question'], 200)}")
    if len(result["unanswered"]) > 10:
        shown = len(result["unanswered"])
        typer.echo(f"... {shown - 10} more of the {shown} biggest groups of unanswered questions in --json or --out")
    typer.echo(f"voted down: {len(result['voted_down'])}")
    for item in result["voted_down"][:10]:  # what a content team fixes first: the question, what was said, why
        why = "; ".join(
            x for x in (item.get("reason"), item.get("correction") and f"should be: {item['correction']}") if x
        )
        question, answer, why = _shown(item["question"], 200), _shown(item["answer"], 100), _shown(why, 200)
        typer.echo(f"  {question} -> {answer}" + (f" ({why})" if why else ""))
    if len(result["voted_down"]) > 10:
        typer.echo(f"  ... {len(result['voted_down']) - 10} more in --json or --out")
