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
    ingested, and whether their files are what their ingest wrote (checked, as a load does)."""
    from rag.errors import CollectionDamagedError
    from rag.store import current_version_dir
    from rag.store.layout import Damage, check_files, lost_pointer, orphaned_versions, read_meta

    settings = load_settings(data_dir=data_dir)
    root = settings.collections_dir
    rows: list[dict[str, Any]] = []
    for cdir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        row: dict[str, Any] = {"name": cdir.name}
        vdir = current_version_dir(cdir)
        if vdir is None:
            if not (orphans := orphaned_versions(cdir)):
                continue  # an ingest that never finished its first version
            row["state"] = CollectionDamagedError(cdir.name, lost_pointer(cdir.name, orphans[0])).message
            rows.append(row)
            continue
        row["version"] = vdir.name
        try:
            meta = read_meta(vdir)
            check_files(vdir, meta)
        except Damage as exc:
            row["state"] = CollectionDamagedError(cdir.name, str(exc)).message
        else:
            row["state"] = "whole" if "files" in meta else "present (written before checksums were kept)"
            row.update(
                chunks=meta.get("chunks"),
                index_type=meta.get("index_type"),
                embedding_model=meta.get("embedding_model"),
                ingested_at=meta.get("created_at"),
            )
        rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
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
            f"{row['version']} ingested {when}; {row['state']}"
        )
