"""`rag forget`: an erasure request (answers by id, or every answer holding what a customer
wrote), or the retention limit applied now (`--older-than`, for cron)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from .app import Collection, DataDir, fail, load_settings, run_or_fail
from .report import _shown


def forget(
    answer: Annotated[
        Optional[list[str]], typer.Option("--answer", help="An answer's id (answer_id); repeat for more.")
    ] = None,
    match: Annotated[
        Optional[str],
        typer.Option(
            help="Every answer whose question, conversation or feedback holds this text (any case): "
            "a customer's e-mail address, name or order number; and each batch job question holding it."
        ),
    ] = None,  # fmt: skip
    older_than: Annotated[
        Optional[float], typer.Option("--older-than", help="Days: delete everything older (RAG_RETENTION_DAYS, now).")
    ] = None,
    collection: Collection = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete; without it, only show what would go.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Forget customers' data: the answers named (by id or by what they hold) go from the answer
    log with their conversations, votes, feedback and handoffs, and from the response cache;
    or, with --older-than, everything older. Shows what it finds; deletes with --yes."""
    from serving.database import Database
    from serving.erasure import expire
    from serving.erasure import forget as forget_records
    from serving.support_store import open_support_store

    if sum(x is not None for x in (answer, match, older_than)) != 1:
        fail("say what to forget: --answer ID (repeatable), --match TEXT, or --older-than DAYS (one of them)")
    if match is not None and len(match.strip()) < 4:
        fail("--match needs at least 4 characters: a shorter text would match most answers")
    settings = load_settings(data_dir=data_dir, **({"collection": collection} if collection else {}))
    database = Database(settings.database_url).open() if settings.database_url else None
    support = open_support_store(settings.data_dir, database)

    jobs = _job_store(settings, database) if match is not None or older_than is not None else None
    unknown: list[str] = []  # ids asked for that the log does not hold: exit 1, a script must see it

    def run() -> None:
        if older_than is not None:
            _older_than(settings, support, jobs, older_than, yes, expire)
            return
        if answer:
            found = [r for a in answer if (r := support.answer(a)) is not None]
            missing = sorted(set(answer) - {r.id for r in found})
            if missing:
                typer.secho(f"not in the answer log (forgotten, expired or never kept): {', '.join(missing)}",
                            fg=typer.colors.YELLOW, err=True)  # fmt: skip
                unknown.extend(missing)
        else:
            found = support.answers_holding(str(match).strip(), collection)
            _elsewhere(support, str(match).strip().lower())
        typer.echo(f"{len(found)} answers found")
        for record in found[:20]:
            typer.echo(f"  {record.id}  {record.collection}  {_shown(record.question, 100)}")
        if len(found) > 20:
            typer.echo(f"  ... and {len(found) - 20} more")
        in_jobs = _in_jobs(jobs, str(match).strip(), collection) if jobs is not None and match is not None else {}
        if not found and not in_jobs:
            return
        if not yes:
            typer.echo("nothing deleted: run again with --yes to forget them")
            return
        deleted: dict[str, int] = {}
        if found:
            cache = _open_cache(settings)
            deleted = run_or_fail(lambda: forget_records(cache, support, found))
        if in_jobs:
            assert jobs is not None
            erased = run_or_fail(lambda: jobs.forget(str(match).strip(), collection))
            deleted["job_questions"] = sum(map(len, erased.values()))
        typer.echo(json.dumps({"deleted": deleted}))

    try:
        run_or_fail(run)
    finally:
        support.close()
        if jobs is not None:
            jobs.close()
        if database is not None:
            database.close()
    if unknown:
        raise typer.Exit(1)


def _elsewhere(support: Any, text: str) -> None:
    """Where else the text is kept that an erasure does not reach: curated answers (made from a
    customer's correction, their question is the customer's) and thumbs-down blocks."""
    from serving.curation import CuratedStore

    curated = [c.id for c in CuratedStore(support.sql).items() if text in f"{c.question} {c.answer}".lower()]
    blocks = [b.get("id") for _, b in support.blocks() if text in str(b.get("question", "")).lower()]
    if curated:
        typer.secho(f"also in {len(curated)} curated answers ({', '.join(curated[:10])}): not forgotten here - "
                    "edit the text or remove them (PATCH or DELETE /v1/curated/{id})", fg=typer.colors.YELLOW, err=True)  # fmt: skip
    if blocks:
        typer.secho(f"also in {len(blocks)} thumbs-down blocks ({', '.join(map(str, blocks[:10]))}): not forgotten "
                    "here - lift them with DELETE /v1/cache/blocks/{id}", fg=typer.colors.YELLOW, err=True)  # fmt: skip


def _job_store(settings: Any, database: Any) -> Any:
    """The batch jobs' store (None: this data dir never ran one)."""
    from serving.jobs import JobStore
    from serving.pg_jobs import PgJobStore

    if database is not None:
        return PgJobStore(database)
    path = settings.data_dir / "jobs.sqlite"
    return JobStore(path) if path.exists() else None


def _in_jobs(jobs: Any, text: str, collection: str | None) -> dict[str, list[int]]:
    """The batch jobs whose questions or answers hold ``text``, shown: they are erased with the
    answers (the question and its answer; the job's other results stay)."""
    found: dict[str, list[int]] = run_or_fail(lambda: jobs.holding(text, collection))
    if found:
        questions = sum(map(len, found.values()))
        names = ", ".join(list(found)[:10]) + (" ..." if len(found) > 10 else "")
        typer.echo(f"{questions} questions in {len(found)} batch jobs ({names})")
    return found


def _open_cache(settings: Any) -> Any:
    if not settings.cache_enabled:
        return None
    from rag.cache_policy import open_cache
    from rag.embedding_models import EMBEDDING_MODELS

    return run_or_fail(lambda: open_cache(settings, EMBEDDING_MODELS[settings.embedding_model].dimension))


def _older_than(settings: Any, support: Any, jobs: Any, days: float, yes: bool, expire: Any) -> None:
    if days <= 0:
        fail("--older-than is a number of days over 0")
    if not yes:
        import time

        before = time.time() - days * 86400
        counts = run_or_fail(lambda: support.older(before))
        finished = run_or_fail(lambda: jobs.finished_before(before)) if jobs is not None else 0
        typer.echo(f"older than {days:g} days: {counts['answers']:,} answers (with their conversations, votes and handoffs), "
                   f"{counts['feedback']:,} feedback, {counts['handoffs']:,} given-up handoffs, {finished:,} finished jobs, "
                   "and the cached answers stored before then")  # fmt: skip
        typer.echo("nothing deleted: run again with --yes to delete them")
        return
    limit = settings.model_copy(update={"retention_days": days})
    deleted = run_or_fail(lambda: expire(limit, _open_cache(settings), support, jobs))
    typer.echo(json.dumps({"deleted": deleted}))
