"""The `rag` command as a user runs it: a real subprocess, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def rag(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAG_DATA_DIR": str(data_dir), "RAG_BACKEND": "extractive"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_ingest_reports_skips_and_asks_answer_with_citations(tmp_path: Path, corpus: Path) -> None:
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 not a pdf")
    result = rag("ingest", str(corpus), "--collection", "shop", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.pdf" in result.stderr
    assert "14 files indexed" in result.stdout and "1 failed" in result.stdout

    result = rag("ask", "How much is express delivery?", "--collection", "shop", "--json", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert "£9.95" in body["answer"]
    assert body["citations"][0]["document_id"] == "shipping-times.html"

    result = rag("ask", "How much is express delivery?", "--collection", "shop", data_dir=tmp_path)
    assert "£9.95" in result.stdout and "cache exact hit" in result.stderr


def test_known_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("")
    result = rag("ingest", str(tmp_path / "empty.md"), data_dir=tmp_path / "data")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: nothing could be indexed")
    assert "Traceback" not in result.stderr

    result = rag("ask", "hello?", "--collection", "missing", data_dir=tmp_path / "data")
    assert result.returncode == 1 and "rag ingest" in result.stderr and "Traceback" not in result.stderr


def test_every_setting_is_documented_in_the_readme() -> None:
    from cli.settings import settings_table
    from rag.settings import Settings

    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no docstring"
        assert f"RAG_{name.upper()}" in readme, f"RAG_{name.upper()} missing from README - run `make docs`"
    assert settings_table() in readme, "README settings table is stale - run `make docs`"
