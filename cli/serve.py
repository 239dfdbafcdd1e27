"""`rag serve`: the HTTP service (uvicorn), and the address it may bind."""

from __future__ import annotations

import errno
import socket
from typing import Annotated, Optional

import typer

from .app import Backend, DataDir, fail, load_settings, private_data_dir, run_or_fail


def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address [env RAG_HOST].")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port [env RAG_PORT].")] = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    vllm_url: Annotated[
        Optional[str], typer.Option(help="vLLM base URL(s), comma-separated [env RAG_VLLM_URL].")
    ] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes [env RAG_WORKERS].")] = None,
) -> None:
    """Run the REST service."""
    import os
    import tempfile

    import uvicorn

    from serving.keys import open_key_store

    overrides = {"host": host, "port": port, "backend": backend, "data_dir": data_dir, "vllm_url": vllm_url}
    overrides["workers"] = workers
    settings = load_settings(**overrides)
    private_data_dir(settings.data_dir)
    # Every worker builds its app from the environment: hand the flags down that way.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"RAG_{name.upper()}"] = str(value)
    from rag.generators import available_generators

    if settings.backend not in available_generators():  # before every worker loads a model to learn it
        fail(f"unknown backend {settings.backend!r} - choose one of: {', '.join(available_generators())}")
    if settings.backend == "llamacpp":
        # Before any worker starts: a build this CPU cannot run is one line of advice here,
        # not a worker killed by SIGILL (the check runs once per build, CPU and model).
        from rag.generators.llamacpp import check_loads

        run_or_fail(
            lambda: check_loads(settings.llamacpp_model, settings.data_dir / "checks", models_dir=settings.models_dir)
        )
    if settings.cache_enabled and not settings.redis_url:  # a full or read-only disk: one line, not a traceback
        from cache.stores import LocalStore, StoreUnavailable

        try:
            LocalStore(settings.cache_dir, 1).close()
        except StoreUnavailable as exc:
            fail(str(exc))
    if not settings.database_url:  # the stores a server opens as it starts: what to do, not a traceback
        from serving.jobs import JobStore
        from serving.support_store import open_support_store

        run_or_fail(lambda: open_support_store(settings.data_dir, None)).close()
        run_or_fail(lambda: JobStore(settings.data_dir / "jobs.sqlite")).close()
    store = run_or_fail(lambda: open_key_store(settings))
    bind, message = bind_address(settings.host, run_or_fail(store.active), run_or_fail(store.created))
    store.close()
    typer.secho(message, fg=typer.colors.YELLOW if bind != settings.host else None, err=True)
    _check_port(bind, settings.port)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers write their metrics here; /metrics sums them. A fresh folder per run.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rag-metrics-")
    uvicorn.run(
        "serving.app:app_from_env",
        factory=True,
        host=bind,
        port=settings.port,
        workers=settings.workers,
        log_config=None,  # the app logs JSON lines itself (RAG_LOG_FORMAT)
        access_log=False,  # one access line per request comes from the app, with its request id
    )


def _check_port(host: str, port: int) -> None:
    """A port another process holds is one line now: uvicorn logs "Application startup
    complete" before it finds out, and then exits (an on-call engineer read the first lines)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        fail(f"cannot bind to {host}:{port} ({exc}) - give a host this machine has (--host, RAG_HOST)")
        return
    for family, kind, proto, _, address in infos:  # each address the server binds, as asyncio binds it
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    fail(f"port {port} on {host} is in use (another `rag serve`?) - stop it, or give --port (RAG_PORT)")
                fail(f"cannot bind to {host}:{port} ({exc.strerror}) - give another --host or --port")


def bind_address(host: str, active_keys: int, created_keys: int | None = None) -> tuple[str, str]:
    """Where `rag serve` may listen, and what it tells the operator: without API keys,
    only this machine can reach the service. Keys all revoked still lock it (``created_keys``)."""
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if active_keys:
        return host, f"API keys required ({active_keys} active); listening on {host}"
    if created_keys:
        return host, (
            f"API keys required, and every key is revoked: requests are refused until you create one "
            f"with `rag keys create`; listening on {host}"
        )
    if loopback:
        return host, (
            f"no API keys configured: listening on {host} only (this machine). "
            "To serve other hosts, create a key with `rag keys create` and set RAG_HOST."
        )
    return "127.0.0.1", (
        f"no API keys configured: refusing to listen on {host}; listening on 127.0.0.1 only. "
        "Create a key with `rag keys create --collections NAME` (or --admin), then restart."
    )
