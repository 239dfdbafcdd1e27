from pathlib import Path

import pytest

from ingest.loaders import iter_files, load_file
from rag.errors import DocumentError

from .conftest import EXAMPLES


@pytest.mark.parametrize(
    ("name", "title", "needle"),
    [
        ("returns-and-refunds.md", "Returns and refunds", "5 to 7 business days"),
        ("shipping-times.html", "Delivery options and times", "Express delivery"),
        ("tracking-a-parcel.txt", "Tracking your parcel", "12 hours after dispatch"),
        ("warranty.pdf", "Warranty and guarantees", "2-year warranty"),
    ],
)
def test_each_format_loads_title_and_text(name: str, title: str, needle: str) -> None:
    path = EXAMPLES / name
    [doc] = load_file(path, path.read_bytes(), document_id=name)
    assert doc.title == title
    assert needle in doc.text
    assert doc.document_id == name


def test_html_drops_scripts_styles_and_navigation() -> None:
    path = EXAMPLES / "shipping-times.html"
    [doc] = load_file(path, path.read_bytes(), document_id="x")
    assert "analytics" not in doc.text and "font-family" not in doc.text and "Help centre" not in doc.text


def test_jsonl_keeps_document_ids() -> None:
    path = EXAMPLES / "store-policies.jsonl"
    docs = load_file(path, path.read_bytes(), document_id="ignored")
    assert [d.document_id for d in docs] == ["policy-price-match", "policy-privacy", "policy-assembly"]
    assert docs[0].title == "Price match promise"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.md", b"  \n", "empty file"),
        ("binary.txt", b"\x00\x01\x02 binary junk", "binary"),
        ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "UTF-8"),
        ("broken.pdf", b"%PDF-1.4\n this is not really a pdf", "PDF"),
        ("bad.jsonl", b'{"id": "a", "text": "fine"}\nnot json\n', "line 2"),
        ("dupe.jsonl", b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "repeats"),
        ("notext.jsonl", b'{"id": "a", "title": "t"}\n', "text"),
    ],
)
def test_unreadable_files_say_why(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        load_file(Path(name), data, document_id=name)


def test_iter_files_recurses_and_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.md").write_text("# Deep\ntext")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.txt").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    found = [p.relative_to(tmp_path).as_posix() for _, p in iter_files([tmp_path])]
    assert found == ["a/b/deep.md"]
