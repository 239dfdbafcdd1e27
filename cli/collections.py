"""`rag collections`: what the data dir holds, collection by collection, and whether it is whole."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from .app import DataDir, load_settings


def collections(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """List the collections: live version, chunks, index type, embedding model, when last
    ingested, and whether their files are what their ingest wrote (checked, as a load does).
    Ends non-zero when one is damaged."""
    from rag.errors import CollectionDamagedError
    from rag.store.layout import Damage, checked_version, collection_dirs

    settings = load_settings(data_dir=data_dir)
    root = settings.collections_dir
    rows: list[dict[str, Any]] = []
    for cdir in collection_dirs(root):
        row: dict[str, Any] = {"name": cdir.name}
        try:
            found = checked_version(cdir)
        except Damage as exc:
            row["state"] = CollectionDamagedError(cdir.name, str(exc)).message
        else:
            if found is None:
                continue  # an ingest that never finished its first version
            vdir, meta = found
            row.update(
                version=vdir.name,
                index_version=meta.get("fingerprint"),  # as /readyz and rag_index_version_info name it
                state="whole" if "files" in meta else "present (written before checksums were kept)",
                chunks=meta.get("chunks"),
                index_type=meta.get("index_type"),
                embedding_model=meta.get("embedding_model"),
                ingested_at=meta.get("created_at"),
            )
        rows.append(row)
    damaged = any("chunks" not in row for row in rows)  # a monitor's check: non-zero when one is
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        raise typer.Exit(1 if damaged else 0)
    if not rows:
        typer.echo(f"no collection under {root} - run `rag ingest PATH --collection NAME`")
        return
    for row in rows:
        if "chunks" not in row:
            typer.secho(f"{row['name']}: {row['state']}", fg=typer.colors.RED)
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["ingested_at"])) if row["ingested_at"] else "?"
        typer.echo(
            f"{row['name']}: {row['chunks']} chunks, {row['index_type']}, {row['embedding_model']}, "
            f"{row['version']} (index version {str(row['index_version'])[:12]}) ingested {when}; {row['state']}"
        )
    if damaged:
        raise typer.Exit(1)
