import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ingest.runner import ingest
from rag.errors import IngestError
from rag.settings import Settings
from rag.store import CollectionIndex, collection_dir, current_version_dir

from .conftest import ROOT, without_digests


def _index(settings: Settings, embedder, name: str = "default") -> CollectionIndex:  # type: ignore[no-untyped-def]
    return CollectionIndex.load(settings.collections_dir, name, model=embedder.name, dimension=embedder.dimension)


def _top(settings: Settings, embedder, question: str) -> str:  # type: ignore[no-untyped-def]
    index = _index(settings, embedder)
    return index.search(embedder.embed_batch([question])[0], 1)[0].document_id


def test_mixed_folder_indexes_good_files_and_reports_bad_ones(corpus: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    (corpus / "corrupt.pdf").write_bytes(b"%PDF-1.7\ngarbage that is no pdf")
    (corpus / "blank.txt").write_text("   ")
    (corpus / "legacy.txt").write_bytes("Caf\xe9 opening hours".encode("latin-1"))
    (corpus / "blob.md").write_bytes(bytes(range(256)))
    (corpus / "caf\udce9.txt").write_text("A file whose name is Latin-1 bytes.")  # b"caf\xe9.txt" on disk

    report = ingest([corpus], "default", settings, embedder, progress=False)

    failed = {Path(src).name: why for src, why in report.failed}
    assert set(failed) == {"corrupt.pdf", "blank.txt", "legacy.txt", "blob.md", "caf\\xe9.txt"}
    assert "rename" in failed["caf\\xe9.txt"]
    assert "PDF" in failed["corrupt.pdf"] and "empty" in failed["blank.txt"]
    assert "UTF-8" in failed["legacy.txt"] and "binary" in failed["blob.md"]
    assert len(report.indexed) == 14
    index = _index(settings, embedder)
    assert len(index) == report.chunks_total > 14
    assert _top(settings, embedder, "how long is the warranty on a sofa") == "warranty.pdf"
    assert _top(settings, embedder, "price match another retailer") == "policy-price-match"


def test_reingest_skips_unchanged_replaces_changed_and_prunes_deleted(
    corpus: Path,
    settings: Settings,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    first = ingest([corpus], "default", settings, embedder, progress=False)
    cdir = collection_dir(settings.collections_dir, "default")
    v1 = current_version_dir(cdir)

    again = ingest([corpus], "default", settings, embedder, progress=False)
    assert (len(again.indexed), len(again.unchanged), again.chunks_added) == (0, 14, 0)
    assert again.version == first.version and current_version_dir(cdir) == v1  # no new version

    (corpus / "gift-cards.txt").write_text(
        "Gift cards\n\nGift cards are valid for 5 years and can be topped up at any till in our stores.\n"
    )
    (corpus / "tracking-a-parcel.txt").unlink()
    third = ingest([corpus], "default", settings, embedder, progress=False)
    assert [Path(s).name for s in third.indexed] == ["gift-cards.txt"]
    assert [Path(s).name for s in third.removed] == ["tracking-a-parcel.txt"]
    assert third.version != first.version

    index = _index(settings, embedder)
    texts = [row[0] for row in index._db.execute("SELECT text FROM chunks")]
    assert any("topped up" in t for t in texts)
    assert not any("never expire" in t for t in texts)  # old gift card chunks are gone
    assert not any("tracking link" in t for t in texts)
    assert len(index) == len(texts)  # FAISS and the chunk store agree
    ids = [row[0] for row in index._db.execute("SELECT id FROM chunks")]
    assert sorted(ids) == sorted(int(i) for i in _faiss_ids(index))


def _faiss_ids(index: CollectionIndex) -> list[int]:
    import faiss

    return list(faiss.vector_to_array(index._index.id_map))


def test_new_chunk_settings_chunk_every_file_again(corpus: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    """A file is unchanged only under the same chunk settings: with others, every file is read
    again (the run says so), so one collection is never chunked two ways."""
    first = ingest([corpus], "default", settings, embedder, progress=False)
    small = settings.model_copy(update={"chunk_size": 300, "chunk_overlap": 50})
    again = ingest([corpus], "default", small, embedder, progress=False)
    assert again.rechunked == f"chunk size/overlap {settings.chunk_size}/{settings.chunk_overlap} -> 300/50"
    assert len(again.indexed) == len(first.indexed) and not again.unchanged
    assert again.chunks_total > first.chunks_total and again.chunks_removed == first.chunks_total
    assert all(len(c.text) <= 300 + 100 for c in _index(small, embedder).document_chunks("returns-and-refunds.md", 99))
    third = ingest([corpus], "default", small, embedder, progress=False)
    assert third.rechunked is None and len(third.unchanged) == len(first.indexed) and not third.indexed


def test_a_pdf_indexed_before_chunks_had_pages_is_read_again(corpus: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    ingest([corpus], "default", settings, embedder, progress=False)
    pdfs = sorted(p.name for p in corpus.glob("*.pdf"))
    assert {c.page for d in pdfs for c in _index(settings, embedder).document_chunks(d, 99)} == {1}
    version = current_version_dir(collection_dir(settings.collections_dir, "default"))
    with sqlite3.connect(version / "chunks.sqlite") as db:  # as the release before wrote it: no pages,
        db.execute("UPDATE chunks SET page = 0")
    without_digests(version)  # nor the files' digests
    again = ingest([corpus], "default", settings, embedder, progress=False)
    assert sorted(Path(s).name for s in again.indexed) == pdfs and len(again.unchanged) == 14 - len(pdfs)
    assert again.chunks_removed == again.chunks_added  # read again in place of their old chunks
    assert {c.page for d in pdfs for c in _index(settings, embedder).document_chunks(d, 99)} == {1}


def test_no_prune_keeps_deleted_files_and_other_roots_are_untouched(
    tmp_path: Path, settings: Settings, embedder
) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "one.md").write_text("# One\nThe first document talks about umbrellas.")
    (b / "two.md").write_text("# Two\nThe second document talks about bicycles.")
    ingest([a], "default", settings, embedder, progress=False)
    ingest([b], "default", settings, embedder, progress=False)  # b does not prune a's files
    assert len(_index(settings, embedder)) == 2
    (a / "one.md").unlink()
    report = ingest([a, b], "default", settings, embedder, prune=False, progress=False)
    assert report.removed == [] and len(_index(settings, embedder)) == 2
    report = ingest([a, b], "default", settings, embedder, progress=False)
    assert [Path(s).name for s in report.removed] == ["one.md"] and len(_index(settings, embedder)) == 1


def test_nothing_indexable_is_an_error(tmp_path: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(IngestError, match="nothing could be indexed"):
        ingest([tmp_path / "empty.txt", tmp_path / "missing"], "default", settings, embedder, progress=False)
    assert current_version_dir(collection_dir(settings.collections_dir, "default")) is None


def test_index_records_its_model_and_refuses_another(corpus: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    ingest([corpus], "default", settings, embedder, progress=False)
    vdir = current_version_dir(collection_dir(settings.collections_dir, "default"))
    assert vdir is not None
    meta = json.loads((vdir / "meta.json").read_text())
    assert (meta["embedding_model"], meta["dimension"]) == ("all-MiniLM-L6-v2", 384)
    from rag.errors import IndexMismatchError

    with pytest.raises(IndexMismatchError, match="--rebuild"):
        CollectionIndex.load(settings.collections_dir, "default", model="other-model", dimension=768)


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from ingest.runner import ingest
from rag.embedder import SentenceTransformerEmbedder
from rag.settings import Settings

class DiesMidway(SentenceTransformerEmbedder):
    def embed_batch(self, texts):
        os.kill(os.getpid(), signal.SIGKILL)   # as if the machine lost power mid-run

ingest([Path(sys.argv[1])], "default", Settings(data_dir=Path(sys.argv[2])), DiesMidway(), progress=False)
"""


def test_killed_run_leaves_previous_index_serving(corpus: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    first = ingest([corpus], "default", settings, embedder, progress=False)
    (corpus / "new-article.md").write_text("# Store cards\nStore cards give 10% off every Tuesday.")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(corpus), str(settings.data_dir)],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    index = _index(settings, embedder)  # still loads, still the first version
    assert index.version == first.version and len(index) == first.chunks_total
    # The next run clears the half-written version and finishes the job.
    report = ingest([corpus], "default", settings, embedder, progress=False)
    assert [Path(s).name for s in report.indexed] == ["new-article.md"]
    cdir = collection_dir(settings.collections_dir, "default")
    assert len(list(cdir.glob("v[0-9]*"))) == 2  # the live version and the one before it


def test_failed_run_keeps_previous_chunks_of_a_file_that_became_unreadable(
    corpus: Path,
    settings: Settings,
    embedder,  # type: ignore[no-untyped-def]
) -> None:
    ingest([corpus], "default", settings, embedder, progress=False)
    (corpus / "gift-cards.txt").write_bytes(b"\x00\x00 corrupted on disk")
    report = ingest([corpus], "default", settings, embedder, progress=False)
    assert [Path(s).name for s, _ in report.failed] == ["gift-cards.txt"]
    assert _top(settings, embedder, "do gift cards expire") == "gift-cards.txt"


def test_the_file_holding_a_document_id_keeps_it_when_it_is_edited(
    tmp_path: Path, settings: Settings, embedder
) -> None:  # type: ignore[no-untyped-def]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "z.jsonl").write_text('{"id": "1", "title": "Do gift cards expire?", "text": "Gift cards never expire."}\n')
    ingest([docs], "default", settings, embedder, progress=False)
    (docs / "a.jsonl").write_text('{"id": "1", "title": "Can I pay by cheque?", "text": "We take no cheques."}\n')
    assert [Path(s).name for s, _ in ingest([docs], "default", settings, embedder, progress=False).failed] == [
        "a.jsonl"
    ]
    (docs / "z.jsonl").write_text(
        '{"id": "1", "title": "Do gift cards expire?", "text": "Gift cards expire after 3 years."}\n'
    )
    report = ingest([docs], "default", settings, embedder, progress=False)  # z.jsonl's old chunks go first
    assert [Path(s).name for s, _ in report.failed] == ["a.jsonl"], report.failed  # not z.jsonl, the holder
    rows = _index(settings, embedder)._db.execute("SELECT document_id, text FROM chunks").fetchall()
    assert len(rows) == 1 and "3 years" in rows[0][1], rows


def test_a_document_id_another_file_holds_is_skipped_and_reported(tmp_path: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    one, two = tmp_path / "shop", tmp_path / "more"
    one.mkdir(), two.mkdir()
    (one / "faq.jsonl").write_text(
        '{"id": "1", "title": "Do you ship to Norway?", "text": "Yes, we ship to Norway in 5 days."}\n'
        '{"id": "2", "title": "Do gift cards expire?", "text": "Gift cards never expire at all."}\n'
    )
    (two / "faq.jsonl").write_text(  # numbered from 1 too: "1" would mix two entries into one
        '{"id": "1", "title": "Can I pay by cheque?", "text": "We do not accept cheques, sorry."}\n'
        '{"id": "3", "title": "Do you sell sofas?", "text": "We sell sofas in 12 fabrics."}\n'
    )
    (one / "notes.md").write_text("# Notes\n\nThe shop opens at 9am on weekdays.\n")
    (two / "notes.md").write_text("# Notes\n\nA second notes.md: its id, notes.md, is taken.\n")
    report = ingest([one, two], "default", settings, embedder, progress=False)
    failed = {str(Path(src).relative_to(tmp_path)): why for src, why in report.failed}
    assert list(failed) == ["more/notes.md"] and "'notes.md' by " in failed["more/notes.md"]
    skipped = [(str(Path(src).relative_to(tmp_path)), why) for src, why in report.skipped_lines]
    assert (
        len(skipped) == 1 and skipped[0][0] == "more/faq.jsonl" and "document id '1' is already used" in skipped[0][1]
    )
    index = _index(settings, embedder)
    rows = index._db.execute("SELECT document_id, text FROM chunks ORDER BY document_id").fetchall()
    assert [d for d, _ in rows] == ["1", "2", "3", "notes.md"]
    assert "Norway" in rows[0][1] and "9am" in rows[3][1]
    again = ingest([one, two], "default", settings, embedder, progress=False)  # nothing changed: the same report
    assert [str(Path(s).relative_to(tmp_path)) for s, _ in again.failed] == ["more/notes.md"]


def test_ingest_shows_its_progress_file_by_file_and_chunk_by_chunk(
    corpus: Path,
    settings: Settings,
    embedder,
    capfd: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    files = sum(1 for p in corpus.rglob("*") if p.is_file())
    report = ingest([corpus], "default", settings, embedder, progress=True)
    err = capfd.readouterr().err
    assert "reading: 100%" in err and f"{files}/{files}" in err  # one step per file
    assert "embedding: 100%" in err and f"{report.chunks_added}/{report.chunks_added}" in err  # and per chunk

    ingest([corpus], "default", settings, embedder, progress=False)  # a script's run is quiet
    assert "reading" not in capfd.readouterr().err


def test_a_utf16_text_file_with_its_mark_is_read(tmp_path: Path, settings: Settings, embedder) -> None:  # type: ignore[no-untyped-def]
    import codecs

    docs = tmp_path / "docs"
    docs.mkdir()
    text = "Opening hours\n\nOur Leeds showroom opens at 9am every weekday.\n"
    (docs / "hours.txt").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))  # Windows' "Unicode"
    (docs / "odd.txt").write_bytes(codecs.BOM_UTF16_LE + b"\x00\xd8")  # a lone surrogate: not UTF-16
    report = ingest([docs], "default", settings, embedder, progress=False)
    assert report.indexed == [str(docs / "hours.txt")], report
    assert "UTF-16" in dict(report.failed)[str(docs / "odd.txt")]
    assert _top(settings, embedder, "When does the Leeds showroom open?") == "hours.txt"
