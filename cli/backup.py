"""`rag backup DEST`: a consistent copy of a data dir, taken while the service runs.

The SQLite stores are copied with SQLite's online backup (a plain `cp` of a database in WAL
mode under writes may copy a torn file), each collection's live version as it is (a
published version is never written again), and the small files beside them. The response
cache is left out: it is rebuilt by answering, and the curated answers and thumbs-down blocks
it holds are kept in the support store too, which puts them back at start-up. The copy is
written to ``DEST/.partial`` and moved up when whole, so a DEST that holds ``.partial`` is a
backup cut short (the next run clears it), and DEST is locked while one writes it: a second
run into the same DEST at once stops, saying so, rather than clearing the first's copy. With
RAG_DATABASE_URL, keys, jobs and the support store live in PostgreSQL: back it up with
`pg_dump`; this copies the rest.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from rag.store import CURRENT_FILE
from rag.store.layout import SETTLED_S, Damage, checked_version, collection_dirs

from .app import DataDir, fail, load_settings

STORES = ("keys.sqlite", "support.sqlite", "jobs.sqlite")  # what cannot be made again
SMALL_FILES = ("cache-verifier.npz", "vllm-models.json")  # calibrated or learnt: kept too
PARTIAL = ".partial"


def _sqlite_copy(source: Path, target: Path) -> str | None:
    """A consistent copy; what is wrong with it, if SQLite's quick check finds pages damaged
    (the online backup copies pages as they are: a damaged database makes a damaged copy)."""
    uri = f"file:{quote(str(source))}?mode=ro"  # a path may hold "?" or "#"
    with closing(sqlite3.connect(uri, uri=True)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
        try:
            found = [row[0] for row in dst.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as exc:
            return str(exc)
    return None if found == ["ok"] else "; ".join(found)


def backup(
    dest: Annotated[Path, typer.Argument(help="A folder that does not exist yet (or is empty).")],
    data_dir: DataDir = None,
) -> None:
    """Copy the data dir's keys, answers and feedback, jobs and collections to DEST, consistently,
    while the service runs. Restore: stop `rag serve`; in RAG_DATA_DIR delete the *.sqlite,
    *.sqlite-wal and *.sqlite-shm files, collections/ and cache/; copy DEST's contents in (or
    point RAG_DATA_DIR at DEST); run `rag cache clear` if the cache is in Redis; point
    RAG_CACHE_VERIFIER, if set, at the restored copy; start it."""
    settings = load_settings(data_dir=data_dir)
    source = settings.data_dir.resolve()
    if not source.is_dir():
        fail(f"no data dir at {source} - give --data-dir (or RAG_DATA_DIR)")
    # Written into DEST/.partial and moved up when whole: a DEST holding .partial is a backup cut short.
    final, dest = dest, dest / PARTIAL
    if final.exists() and not final.is_dir():
        fail(f"{final} is not a folder - give a new one")
    try:
        final.mkdir(parents=True, exist_ok=True)
        lock = os.open(final, os.O_RDONLY | os.O_DIRECTORY)  # held until this process ends
    except OSError as exc:
        fail(f"cannot make {final} ({exc.strerror}) - give a DEST where you may write")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:  # a file system without locks (some NFS mounts) backs up unlocked
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            fail(f"another `rag backup` is writing to {final} now - wait for it, or give another DEST")
    if any(p.name != PARTIAL for p in final.iterdir()):
        fail(f"{final} is not an empty folder - give a new one, so that no backup is mixed with another")
    if dest.exists():  # a run killed before it finished: ours to clear
        shutil.rmtree(dest)
    try:
        dest.mkdir()
    except OSError as exc:
        fail(f"cannot make {dest} ({exc.strerror}) - give a DEST where you may write")
    final.chmod(0o700)  # customers' questions and the key hashes: the owner's only
    copied: list[str] = []
    damaged: list[str] = []
    try:
        for name in STORES:
            if (source / name).exists():
                problem = _sqlite_copy(source / name, dest / name)
                if problem:  # no backup: a restore would put the damage back
                    (dest / name).unlink()
                    damaged.append(f"{name} ({problem})")
                else:
                    copied.append(name)
        for name in SMALL_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, dest / name)
                copied.append(name)
        for cdir in collection_dirs(settings.collections_dir):
            collection = cdir.name
            try:
                found = checked_version(cdir, SETTLED_S)
            except Damage as exc:  # a copy of it would be no backup: say so, keep the rest
                damaged.append(f"collections/{collection} ({exc})")
                continue
            if found is None:
                continue
            version = found[0]
            target = dest / "collections" / collection
            shutil.copytree(version, target / version.name)
            (target / CURRENT_FILE).write_text(version.name + "\n")
            copied.append(f"collections/{collection}/{version.name}")
    except (OSError, sqlite3.Error) as exc:
        fail(f"the backup stopped ({exc}) - {dest} is incomplete: delete it and run again")
    if not copied:
        shutil.rmtree(dest)
        fail(f"nothing to back up in {source}" + (f" but the damaged {'; '.join(damaged)}" if damaged else ""))
    for path in list(dest.iterdir()):
        path.replace(final / path.name)
    dest.rmdir()
    dest = final
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    typer.echo(f"backed up {source} to {dest}: {', '.join(copied)} ({size / 2**20:.1f} MiB)")
    typer.echo(
        "left out: the response cache (rebuilt by answering; curated answers and blocks come back from the support store)"
    )
    if settings.database_url:
        typer.secho(
            "keys, jobs and the support store are in PostgreSQL (RAG_DATABASE_URL): back them up with pg_dump",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    if damaged:
        fail(
            f"left out, damaged: {'; '.join(damaged)} - rebuild a collection (`rag ingest PATH... --collection NAME "
            "--rebuild`); put a database back from an earlier backup"
        )
