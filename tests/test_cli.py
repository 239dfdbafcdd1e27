"""The `rag` command as a user runs it: a real subprocess, real files."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, files_holding


def rag(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(data_dir), "RAG_BACKEND": "extractive"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_ingest_reports_skips_and_asks_answer_with_citations(tmp_path: Path, corpus: Path) -> None:
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 not a pdf")
    (corpus / "Support FAQ.xlsx").write_bytes(b"PK\x03\x04")  # an office file is named, not passed over
    (corpus / "archive").mkdir()
    (corpus / "archive" / "gift-cards.txt").write_bytes((corpus / "gift-cards.txt").read_bytes())
    (corpus / "archive" / "returns.md").write_text("# Returns and refunds\n\nYou can return items within 14 days.\n")
    (corpus / "versand.md").write_text(  # a page in German: indexed, and said to be not English
        "# Versand und Lieferzeiten\n\nDie Standardlieferung innerhalb Deutschlands dauert drei bis fünf "
        "Werktage und kostet 4,95 Euro. Ab einem Bestellwert von 50 Euro ist der Versand kostenlos. Die "
        "Expresslieferung kommt am nächsten Werktag, wenn Sie bis 14 Uhr bestellen, und kostet 9,95 Euro. "
        "Sendungen in die Schweiz und nach Österreich brauchen fünf bis sieben Werktage.\n"
    )
    result = rag("ingest", str(corpus), "--collection", "shop", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.pdf" in result.stderr
    assert "Support FAQ.xlsx: a spreadsheet: save it as CSV" in result.stderr
    assert "twice: 2 files with the same content: archive/gift-cards.txt, gift-cards.txt" in result.stderr
    assert (
        "twice: 2 files with the title 'Returns and refunds': archive/returns.md, returns-and-refunds.md"
        in result.stderr
    )
    assert "remove an outdated or repeated copy" in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("not English?")] == [
        f"not English? {corpus.resolve() / 'versand.md'}"  # the English pages, PDFs included, are not named
    ]
    assert "does not read as English" in result.stderr
    assert "17 files indexed" in result.stdout and "2 failed" in result.stdout

    result = rag("ask", "How much is express delivery?", "--collection", "shop", "--json", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert "£9.95" in body["answer"]
    assert body["citations"][0]["document_id"] == "shipping-times.html"

    result = rag("ask", "How much is express delivery?", "--collection", "shop", data_dir=tmp_path)
    assert "£9.95" in result.stdout and "cache exact hit" in result.stderr


def test_a_reingest_drops_the_cached_answers_it_made_stale_and_says_how_many(tmp_path: Path, corpus: Path) -> None:
    data = tmp_path / "data"
    assert rag("ingest", str(corpus), data_dir=data).returncode == 0
    for question in ("How much is express delivery?", "Do gift cards expire?"):
        assert rag("ask", question, data_dir=data).returncode == 0
    page = corpus / "shipping-times.html"
    page.write_text(page.read_text().replace("&pound;9.95", "&pound;10.95"))
    result = rag("ingest", str(corpus), data_dir=data)
    assert result.returncode == 0, result.stderr
    assert "response cache: 1 cached answer dropped (they rest on passages this ingest changed" in result.stdout
    assert files_holding(data / "cache", "£9.95") == []  # gone from the disk, not only refused
    assert "cache exact hit" in rag("ask", "Do gift cards expire?", data_dir=data).stderr  # its page is unchanged
    fresh = rag("ask", "How much is express delivery?", data_dir=data)
    assert "£10.95" in fresh.stdout and "cache miss" in fresh.stderr
    assert "dropped" not in rag("ingest", str(corpus), data_dir=data).stdout  # nothing changed: nothing said


def test_known_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("")
    result = rag("ingest", str(tmp_path / "empty.md"), data_dir=tmp_path / "data")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: nothing could be indexed")
    assert "Traceback" not in result.stderr

    result = rag("ask", "hello?", "--collection", "missing", data_dir=tmp_path / "data")
    assert result.returncode == 1 and "rag ingest" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_setting_is_one_line_naming_its_variable(tmp_path: Path) -> None:
    """Named as it is set (RAG_...), saying what it takes; a URL's password never shown."""
    cases = {
        "RAG_REDIS_URL": (
            "localhost:6379",
            "RAG_REDIS_URL: 'localhost:6379' is not a Redis URL: write it like redis://",
        ),
        "RAG_DATABASE_URL": ("mysql://u:secret@db:3306/x", "RAG_DATABASE_URL: 'db:3306/x' is not a PostgreSQL URL"),
        "RAG_CACHE_THRESHOLD": ("1.5", "RAG_CACHE_THRESHOLD: Input should be less than or equal to 1 (got '1.5')"),
        "RAG_CORS_ORIGINS": ("https://x.com", "RAG_CORS_ORIGINS cannot be parsed - a list or a mapping is JSON"),
        "RAG_VLLM_URL": ("htp://gpu:8000", "RAG_VLLM_URL: 'htp://gpu:8000' is not a vLLM server's URL"),
    }
    for variable, (value, said) in cases.items():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(tmp_path), variable: value}
        result = subprocess.run(
            [sys.executable, "-m", "cli", "keys", "list"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 1 and last.startswith("error: invalid settings: ") and said in last, result.stderr
        assert "Traceback" not in result.stderr and "secret" not in result.stderr
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(tmp_path), "RAG_CACHE_TRESHOLD": "0.9"}
    misspelt = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "list"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert misspelt.returncode == 0, misspelt.stderr  # ignored, as before, but said
    assert "RAG_CACHE_TRESHOLD is not a setting and is ignored - did you mean RAG_CACHE_THRESHOLD?" in misspelt.stderr
    typo = rag("keys", "create", "--collections", "shpo", data_dir=tmp_path)  # made, with a warning
    assert typo.returncode == 0 and "no collection 'shpo' here yet (a typo?)" in typo.stderr, typo.stderr


def test_serve_on_a_port_another_process_holds_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = rag("serve", "--host", "127.0.0.1", "--port", str(port), data_dir=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is in use (another `rag serve`?) - stop it, or give --port (RAG_PORT)"
    )


def test_every_setting_is_documented_in_the_readme() -> None:
    from cli.settings import settings_table
    from rag.settings import Settings

    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no docstring"
        assert f"RAG_{name.upper()}" in readme, f"RAG_{name.upper()} missing from README - run `make docs`"
    assert settings_table() in readme, "README settings table is stale - run `make docs`"


def test_ingest_on_a_full_disk_is_one_line_and_the_collection_stays_as_it_was(tmp_path: Path, corpus: Path) -> None:
    """Fault injection: the files this run may write are capped (RLIMIT_FSIZE, as a full disk
    refuses writes), past what the index of the second folder needs."""
    import resource
    import signal

    from .conftest import FIXTURES

    assert rag("ingest", str(corpus), data_dir=tmp_path).returncode == 0
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "hotels.jsonl").write_bytes((FIXTURES / "dstc11_hotels_corpus_slice.jsonl").read_bytes())

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(tmp_path), "RAG_BACKEND": "extractive"}
    full = subprocess.run(
        [sys.executable, "-m", "cli", "ingest", str(corpus), str(tmp_path / "more")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_disk,
    )  # fmt: skip
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.strip().splitlines()[-1].startswith("error: cannot write"), full.stderr
    assert "free disk space" in full.stderr
    result = rag("ask", "How much is express delivery?", "--json", data_dir=tmp_path)
    assert result.returncode == 0 and "£9.95" in json.loads(result.stdout)["answer"]  # the version before serves

    def no_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))

    shutil.rmtree(tmp_path / "cache")  # `rag ask` on a full disk: its cache cannot be made, and it says so
    asked = subprocess.run(
        [sys.executable, "-m", "cli", "ask", "How much is express delivery?"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=no_disk,
    )  # fmt: skip
    assert asked.returncode == 1 and "Traceback" not in asked.stderr, asked.stderr
    assert asked.stderr.strip().splitlines()[-1].startswith("error: cannot open the response cache"), asked.stderr


def test_a_backup_taken_while_serving_restores_keys_answers_feedback_and_collections(
    tmp_path: Path,
    corpus: Path,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    import httpx

    from rag.pipeline import build_pipeline
    from serving.app import create_app

    from .conftest import make_settings
    from .servers import running_server

    data = tmp_path / "data"
    assert rag("ingest", str(corpus), data_dir=data).returncode == 0
    assert data.stat().st_mode & 0o777 == 0o700  # a new data dir: customers' questions, keys' hashes
    key = rag("keys", "create", "--admin", data_dir=data).stdout.split()[-1]
    auth = {"Authorization": f"Bearer {key}"}
    settings = make_settings(data, backend="extractive")
    with running_server(create_app(settings, build_pipeline(settings, embedder))) as url:
        answer = httpx.post(f"{url}/v1/query", json={"question": "Do gift cards expire?"}, headers=auth, timeout=60)
        vote = {"answer_id": answer.json()["answer_id"], "rating": "down", "reason": "outdated"}
        assert httpx.post(f"{url}/v1/feedback", json=vote, headers=auth, timeout=60).status_code == 200
        # What a backup killed half-way left: DEST itself never appears until the copy is whole.
        killed = tmp_path / "backup" / ".partial"
        killed.mkdir(parents=True)
        (killed / "support.sqlite").write_bytes(b"half a file")
        held = os.open(tmp_path / "backup", os.O_RDONLY | os.O_DIRECTORY)  # as a run writing it now holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = rag("backup", str(tmp_path / "backup"), data_dir=data)
        os.close(held)
        assert busy.returncode == 1 and "another `rag backup` is writing" in busy.stderr, busy.stderr
        assert (killed / "support.sqlite").read_bytes() == b"half a file"  # its copy left alone
        done = rag("backup", str(tmp_path / "backup"), data_dir=data)  # while it serves
    assert done.returncode == 0 and "keys.sqlite" in done.stdout and "collections/default/" in done.stdout, done.stderr
    assert not killed.exists()
    assert rag("backup", str(tmp_path / "backup"), data_dir=data).returncode == 1  # never mixed with another

    restored = make_settings(tmp_path / "backup", backend="extractive")
    with running_server(create_app(restored, build_pipeline(restored, embedder))) as url:
        again = httpx.post(f"{url}/v1/query", json={"question": "Do gift cards expire?"}, headers=auth, timeout=60)
        assert again.status_code == 200 and "never expire" in again.json()["answer"]  # the key, the collection
    report = rag("report", "--json", data_dir=tmp_path / "backup")
    assert [v["reason"] for v in json.loads(report.stdout)["voted_down"]] == ["outdated"], report.stderr
