"""`rag keys`: API keys: create, list, revoke."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .app import DataDir, fail, load_settings, run_or_fail

keys_app = typer.Typer(rich_markup_mode=None, no_args_is_help=True, help="API keys: create, list, revoke.")


@keys_app.command("create")
def keys_create(
    collections: Annotated[
        Optional[str], typer.Option(help="Comma-separated collections the key reaches ('*' for all).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Every collection, plus admin routes.")] = False,
    public: Annotated[
        bool,
        typer.Option(
            "--public",
            help="A key for a web page (the chat widget's), which anyone can read: limits per visitor "
            "(RAG_VISITOR_RATE_LIMIT, RAG_MAX_CONCURRENT_PER_VISITOR), no batch jobs.",
        ),
    ] = False,
    name: Annotated[Optional[str], typer.Option(help="A label to recognise the key by.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key and print it once; only its hash is stored."""
    from serving.keys import open_key_store

    settings = load_settings(data_dir=data_dir)
    wanted = [c.strip() for c in (collections or "").split(",") if c.strip()]
    store = open_key_store(settings)
    key, info = run_or_fail(lambda: store.create(wanted, admin=admin, name=name, public=public))
    store.close()
    from rag.store import list_collections

    if missing := [c for c in wanted if c != "*" and c not in list_collections(settings.collections_dir)]:
        typer.secho(
            f"warning: no collection {', '.join(map(repr, missing))} here yet (a typo?); the key reaches it once "
            f"it is ingested. Collections: {', '.join(list_collections(settings.collections_dir)) or 'none'}",
            fg=typer.colors.YELLOW, err=True,
        )  # fmt: skip
    scope = "admin, every collection" if info.admin else "collections: " + ", ".join(info.collections)
    scope += ", public: for a web page" if info.public else ""
    typer.secho(f"key {info.id} ({scope}); shown only now, store it safely:", err=True)
    typer.echo(key)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """Keys by id (never the keys themselves)."""
    from serving.keys import open_key_store

    store = open_key_store(load_settings(data_dir=data_dir))
    for info in run_or_fail(store.list):
        state = "revoked" if info.revoked_at else "active"
        kind = "admin" if info.admin else ("public:" if info.public else "") + ",".join(info.collections)
        typer.echo(f"{info.id}\t{state}\t{kind}\t{info.name or ''}")
    store.close()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `rag keys list`).")], data_dir: DataDir = None
) -> None:
    """Revoke a key: it stops working within a second, in every worker (every replica, with RAG_DATABASE_URL)."""
    from serving.keys import open_key_store

    store = open_key_store(load_settings(data_dir=data_dir))
    revoked = run_or_fail(lambda: store.revoke(key_id))
    store.close()
    if not revoked:
        fail(f"no active key {key_id!r} - see `rag keys list`")
    typer.echo(f"revoked {key_id}")
