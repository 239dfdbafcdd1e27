"""The Typer app the commands are registered on, and what they share: the common options,
the settings from flags, and the one way a command fails."""

from __future__ import annotations

import difflib
import errno
import functools
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from pydantic import ValidationError

from cache.stores import StoreUnavailable, damaged
from rag.errors import CollectionNotFoundError, RagError
from rag.settings import Settings

app = typer.Typer(
    rich_markup_mode=None,
    add_completion=False,
    no_args_is_help=True,
    help="Grounded, cited answers from your documents.",
)

DataDir = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Where indexes and the cache live [env RAG_DATA_DIR].")
]
Collection = Annotated[Optional[str], typer.Option("--collection", "-c", help="Collection name [env RAG_COLLECTION].")]
Backend = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        "-b",
        help="Generator backend: extractive (the default), llamacpp, vllm, vllm-engine, instant [env RAG_BACKEND].",
    ),
]


# RAG_ variables that are not settings: the CLI's own, the tests' (and RAG_TEST_*, RAG_FUZZ_*).
_NOT_SETTINGS = frozenset({"RAG_API_KEY", "RAG_CRASH_SEED"})


@functools.cache  # once a process, however many times settings are loaded
def _unknown_variables() -> None:
    """Warn of each RAG_ variable that names no setting ("RAG_CACHE_TRESHOLD"): it is ignored,
    and a typo in a deploy would otherwise start with the default in silence."""
    known = {f"RAG_{name.upper()}" for name in Settings.model_fields} | _NOT_SETTINGS
    for name in sorted(os.environ):
        if name.startswith("RAG_") and name not in known and not name.startswith(("RAG_TEST_", "RAG_FUZZ_")):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" - did you mean {close[0]}?" if close else " - `rag settings` lists them"
            typer.secho(f"warning: {name} is not a setting and is ignored{hint}", fg=typer.colors.YELLOW, err=True)


def load_settings(**overrides: Any) -> Settings:
    _unknown_variables()
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fail("invalid settings: " + "; ".join(settings_problem(e) for e in exc.errors()))
        raise
    except ValueError as exc:  # a value no field's check reached: an environment variable that is no JSON
        field = str(exc).split('field "', 1)[-1].split('"', 1)[0] if 'field "' in str(exc) else None
        where = f"RAG_{field.upper()} cannot be parsed" if field else str(exc)
        fail(
            f"invalid settings: {where} - a list or a mapping is JSON, e.g. RAG_CORS_ORIGINS='[\"https://example.com\"]'"
        )
        raise


def private_data_dir(data_dir: Path) -> None:
    """A new data dir is the service user's alone (0700): it holds customers' questions, the
    API keys' hashes and the backups' sources. One that exists keeps its mode."""
    if not data_dir.exists():
        try:
            data_dir.mkdir(mode=0o700, parents=True)
        except OSError:  # read-only, or no right: the command that writes there says so
            pass


def settings_problem(error: Any) -> str:
    """One line per bad setting, named as it is set (RAG_NAME), saying what it takes."""
    name = str(error["loc"][0]) if error.get("loc") else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    plain = isinstance(given, str | int | float) and given != "" and repr(given) not in message
    shown = f" (got {given!r})" if plain and not name.endswith("_url") else ""  # a URL may hold a password
    return f"RAG_{name.upper()}: {message}{shown}"


def require_collection(settings: Settings, collection: str | None) -> None:
    """A collection named on the command line that is not ingested here: one line, with the
    ones that are."""
    from rag.store import check_collection_name, list_collections

    known = list_collections(settings.collections_dir)
    if collection is not None and run_or_fail(lambda: check_collection_name(collection)) not in known:
        fail(
            f"no collection {collection!r} in {settings.data_dir} - the collections there: {', '.join(known) or 'none'}"
        )


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def counts(text: str, option: str) -> list[int]:
    """A comma-separated list of whole numbers of at least 1 ("1,8,32"), or a clear failure."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        fail(f"{option} takes whole numbers of at least 1, separated by commas (for example 1,8), not {text!r}")
    return values


def index_types(text: str, option: str = "--index-type") -> list[str]:
    """Comma-separated vector index types, each one the store knows, or a clear failure."""
    from rag.store import INDEX_TYPES

    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in INDEX_TYPES]
    if not names or unknown:
        fail(f"{option}: {', '.join(unknown) or repr(text)} is not an index type - use {', '.join(INDEX_TYPES)}")
    return names


def run_or_fail(fn: Any) -> Any:
    try:
        return fn()
    except CollectionNotFoundError as exc:  # here, on the server itself, the folder helps
        fail(f"{exc.message} (data dir: {exc.data_dir})")
    except RagError as exc:
        fail(exc.message)
    except StoreUnavailable as exc:  # the response cache on a full or read-only disk: it says what to do
        fail(str(exc))
    except sqlite3.OperationalError as exc:  # a full disk, a read-only data dir: what to do, not a traceback
        if not any(words in str(exc) for words in ("disk", "full", "readonly", "read-only", "unable to open")):
            raise
        fail(f"cannot write under the data dir ({exc}) - free disk space, or make RAG_DATA_DIR writable")
    except sqlite3.DatabaseError as exc:  # past what opening it read: a page of a table
        if not damaged(exc):
            raise
        fail(
            f"a database under the data dir is damaged ({exc}) - put it back from a `rag backup` copy, or move it "
            "aside to start without it"
        )
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            raise
        fail(
            f"cannot write {exc.filename or 'under the data dir'} ({exc.strerror}) - free disk space, or make RAG_DATA_DIR writable"
        )
