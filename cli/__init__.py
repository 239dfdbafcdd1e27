"""The `rag` command, the top layer: it parses flags into Settings and calls the packages
below it (serving, ingest, eval; rag and cache under those). One module per command group;
the commands are registered here (`rag --help` lists the single commands in this order,
then the groups in theirs)."""

from __future__ import annotations

from . import ask, backup, bench, cache, collections, curated, forget, ingest, jobs, keys, report, serve, settings
from . import eval as evaluate
from .app import app

app.command()(jobs.batch)
app.command()(ingest.ingest)
app.command()(collections.collections)
app.command()(serve.serve)
app.add_typer(keys.keys_app, name="keys")
app.command()(ask.ask)
app.add_typer(bench.bench_app, name="bench")
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(cache.cache_app, name="cache")
app.add_typer(curated.curated_app, name="curated")
app.command()(report.report)
app.command()(forget.forget)
app.command("settings")(settings.show_settings)
app.command()(backup.backup)


def main() -> None:
    app()
