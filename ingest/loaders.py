"""Read files into documents: one loader per format, each turning bytes into text.

A file that cannot be read raises :class:`rag.errors.DocumentError` with the reason, so the
caller can report it and go on with the rest.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from rag.errors import DocumentError
from rag.wire import jsonl_lines

from .html import html_to_text

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl", ".csv")
# Files a content team keeps documents in that are not read: found in a folder, each is
# reported as not indexed, with what to save it as (an image or a stylesheet is passed over).
_SAVE_AS = {
    **dict.fromkeys((".xlsx", ".xls", ".xlsm", ".ods", ".numbers"), "a spreadsheet: save it as CSV (UTF-8) with question and answer columns"),
    **dict.fromkeys((".docx", ".doc", ".odt", ".rtf", ".pages"), "a word-processor file: save or download it as PDF, HTML or Markdown"),
    **dict.fromkeys((".pptx", ".ppt", ".odp"), "slides: save them as PDF"),
}  # fmt: skip


@dataclass(frozen=True)
class Document:
    """One document: a whole file, or one line of a .jsonl corpus."""

    document_id: str
    title: str
    text: str
    source: str
    metadata: dict[str, str] = field(default_factory=dict)
    url: str = ""
    """Where customers read it (cited as a link): a page's canonical address, a Markdown
    file's front matter ``url``, a .jsonl or .csv entry's ``url``; "" if none is known."""
    pages: tuple[int, ...] = ()
    """A PDF's pages: the offset in ``text`` where each begins (page n at ``pages[n - 1]``)."""

    def page_at(self, offset: int) -> int:
        """The page (from 1) that ``text[offset]`` is on; 0 for a document without pages."""
        return bisect.bisect_right(self.pages, offset) if self.pages else 0


def _decode(data: bytes) -> str:
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):  # Windows' "Unicode" text: its mark says so
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DocumentError(f"not valid UTF-16 (byte {exc.start}) - re-save the file as UTF-8") from exc
        if "\x00" in text:  # UTF-32, whose mark starts as UTF-16's does, or binary
            raise DocumentError("not UTF-8 or UTF-16 text (it decodes to NUL characters) - re-save it as UTF-8")
        return text
    if b"\x00" in data[:8192]:
        raise DocumentError("looks like a binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not valid UTF-8 (byte {exc.start}) - re-save the file as UTF-8") from exc


def _first_line_title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:200]
    return fallback


class Page(NamedTuple):
    """What a loader reads from one file."""

    title: str
    text: str
    url: str
    """Its public address where the file says (a page's canonical link, a Markdown file's
    front matter), else ""."""
    pages: tuple[int, ...] = ()
    """A PDF's pages: where each begins in ``text`` (page n at ``pages[n - 1]``)."""


def _load_text(data: bytes, path: Path) -> Page:
    text = _decode(data)
    return Page(_first_line_title(text, path.stem), text, "")


_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def _load_markdown(data: bytes, path: Path) -> Page:
    """A Markdown file's title is its front matter's ``title:`` (Jekyll, Hugo, Docusaurus),
    else its first ``#`` heading; the front matter itself (slug, tags, author) is not text."""
    import yaml

    text = _decode(data)
    title = url = ""
    front = _FRONT_MATTER_RE.match(text)
    if front:
        try:
            meta = yaml.safe_load(front.group(1))
        except yaml.YAMLError:
            meta = None
        if isinstance(meta, dict):  # else it was a rule and a paragraph, not front matter
            text = text[front.end() :]
            title = str(meta.get("title") or "").strip()
            url = _web_address(meta.get("url") or meta.get("canonical_url") or meta.get("permalink"))
    match = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
    title = title or (match.group(1).strip() if match else path.stem)
    return Page(title, text if match or not front or not title else f"# {title}\n\n{text}", url)


def _web_address(value: object) -> str:
    """``value`` if it is an http(s) address (a citation's link), else ""."""
    text = str(value or "").strip()
    return text if re.match(r"^https?://[^\s/]+", text, re.IGNORECASE) else ""


def _load_html(data: bytes, path: Path) -> Page:
    title, text, url = html_to_text(_decode(data), path)
    return Page(title, text, _web_address(url))


def _load_pdf(data: bytes, path: Path) -> Page:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    # pypdf logs what it finds wrong ("EOF marker not found") as well as raising it: the run's
    # report says it once, with the file's name.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise DocumentError(f"corrupt or unreadable PDF ({exc})") from exc
    if pages and not any(p.strip() for p in pages):
        raise DocumentError(
            f"no text in its {len(pages)} page(s): a scan or images of text - "
            "run OCR on it first (ocrmypdf, or the scanner's searchable-PDF setting)"
        )
    text, starts = _join_pages(_without_page_furniture(pages))
    return Page(meta_title or _first_line_title(text, path.stem), text, "", starts)


_PAGE_NUMBER_RE = re.compile(r"^(?:page\s*)?\d{1,4}(?:\s*(?:of|/)\s*\d{1,4})?$", re.IGNORECASE)
_PAGE_WORD_RE = re.compile(r"\bpage\s*\d|\b\d{1,4}\s*(?:of|/)\s*\d{1,4}\s*$", re.IGNORECASE)


def _without_page_furniture(pages: list[str]) -> list[list[str]]:
    """Each page's lines without its running header and footer: a line that stands the same
    near the top or the bottom of most pages (its page number aside, where it has one: "…
    Page 2 of 8"), and a bare page number as a page's first or last line. Left in, they are
    spliced into the sentence that crosses the page break and quoted as answers. A figure
    inside a page, or "Section 2" at the top of one, is text."""
    lines = [[line.strip() for line in page.splitlines() if line.strip()] for page in pages]

    def key(line: str) -> str:
        text = " ".join(line.lower().split())
        return re.sub(r"\d+", "#", text) if _PAGE_WORD_RE.search(text) else text

    seen: Counter[str] = Counter()
    for page in lines:
        seen.update({key(line) for line in page[:3] + page[-3:]})
    running = {k for k, n in seen.items() if len(lines) >= 3 and n >= max(3, 0.6 * len(lines))}

    def furniture(page: list[str], i: int) -> bool:
        edge = i < 3 or i >= len(page) - 3
        number = (i < 2 or i >= len(page) - 2) and _PAGE_NUMBER_RE.match(page[i]) is not None
        return number or (edge and key(page[i]) in running)

    return [[line for i, line in enumerate(page) if not furniture(page, i)] for page in lines]


def _join_pages(pages: list[list[str]]) -> tuple[str, tuple[int, ...]]:
    """Pages one after another, and where each begins (a page with no text begins where the
    next one does); a sentence that runs on over a page break is joined again, and belongs to
    the page it begins on (its page ends after it)."""
    text = ""
    starts: list[int | None] = []
    for page in pages:
        if not page:
            starts.append(None)  # where the next page begins (below)
            continue
        body = "\n".join(page)
        runs_on = text and text[-1] not in ".!?:;" and page[0][:1].islower()
        joint = " " if runs_on else "\n\n" if text else ""
        own = re.search(r"[.!?]\s+", body) if runs_on else None  # where the page's own sentences begin
        starts.append(len(text) + len(joint) + (own.end() if own else len(body) if runs_on else 0))
        text = f"{text}{joint}{body}"
    filled: list[int] = []
    after = len(text)
    for start in reversed(starts):
        after = after if start is None else start
        filled.append(after)
    return text, tuple(reversed(filled))


def _load_csv(data: bytes, path: Path, source: str) -> Loaded:
    """A spreadsheet of questions and answers (saved as CSV: comma, semicolon or tab), or of
    titles and texts: each row a document, like a .jsonl line; a row without its text is
    reported by its line number and the rest are indexed."""
    text = _decode(data)
    try:  # the delimiter only: a sniffed quote character (an answer's 'quoted' word) cuts answers short
        delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t").delimiter
    except csv.Error:
        delimiter = ","
    rows = csv.reader(io.StringIO(text), delimiter=delimiter, quotechar='"')
    header = [h.strip().lower() for h in next(rows, [])]
    names = {"id": "id", "title": "title", "text": "text", "question": "question", "answer": "answer",
             "body": "text", "content": "text", "q": "question", "a": "answer", "url": "url", "link": "url"}  # fmt: skip
    columns = {names[h]: n for n, h in enumerate(header) if h in names}
    if "text" not in columns and "answer" not in columns:
        raise DocumentError(
            f"a .csv needs a header row naming its columns: question and answer (or title and text); "
            f"its first row is {', '.join(header[:6]) or 'empty'}"
        )
    entries = (
        (
            n,
            partial(
                _document,
                {f: row[i].strip() for f, i in columns.items() if i < len(row) and row[i].strip()},
                f"row {n}",
                path,
                source,
            ),
        )
        for n, row in enumerate(rows, start=2)
        if any(cell.strip() for cell in row)
    )
    return _entries(entries, "row")


def _entries(entries: Iterator[tuple[int, Callable[[], Document]]], unit: str) -> Loaded:
    """The documents of a file of entries (.jsonl lines, .csv rows): a bad one, or one whose
    id an earlier one has, is skipped and reported by its number; the rest are indexed."""
    loaded = Loaded([])
    seen: dict[str, int] = {}
    for number, read in entries:
        try:
            doc = read()
        except DocumentError as exc:
            loaded.problems.append(exc.message)
            continue
        if doc.document_id in seen:
            loaded.problems.append(
                f"{unit} {number} repeats the id {doc.document_id!r} of {unit} {seen[doc.document_id]} - skipped; "
                f"give each {unit} its own id (a {unit} without one is named by its text: the same text repeats it)"
            )
            continue
        seen[doc.document_id] = number
        loaded.documents.append(doc)
    return loaded


_LOADERS: dict[str, Callable[[bytes, Path], Page]] = {
    ".txt": _load_text,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
}


@dataclass
class Loaded:
    """A file's documents, and the lines of it that were skipped (with their reasons)."""

    documents: list[Document]
    problems: list[str] = field(default_factory=list)


def _jsonl_record(line: str, lineno: int, path: Path, source: str) -> Document:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"line {lineno} is not JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise DocumentError(f'line {lineno} is not an object like {{"id", "title", "text"}}')
    return _document(record, f"line {lineno}", path, source)


def _document(record: dict[str, Any], where: str, path: Path, source: str) -> Document:
    """One entry of a .jsonl or .csv file: {id, title, text} or {id, question, answer}."""
    text = record.get("text")
    if text is None and "answer" in record:  # FAQ shape: question + answer is the passage
        text = f"{record.get('question', '')}\n{record['answer']}"
    if not isinstance(text, str) or not text.strip():
        faq = "question" in record or "answer" in record
        raise DocumentError(f"{where} has no answer" if faq else f'{where} has no "text"')
    # Without an id, one made from the line's own text: a line added above it moves nothing
    # (by line number, every id after it would name another entry from then on).
    made = f"{path.stem}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    doc_id = str(record.get("id", made))
    title = str(record.get("title") or record.get("question") or doc_id)
    return Document(document_id=doc_id, title=title, text=text, source=source, url=_web_address(record.get("url")))


def _load_jsonl(data: bytes, path: Path, source: str) -> Loaded:
    """Every good line is a document; a bad line (not JSON, no text, an id seen on an earlier
    line) is skipped and reported with its number, and the rest of the file is still indexed."""
    lines = enumerate(jsonl_lines(_decode(data)), start=1)
    entries = ((n, partial(_jsonl_record, line, n, path, source)) for n, line in lines if line.strip())
    return _entries(entries, "line")


def load_file(path: Path, data: bytes, document_id: str, source: str | None = None) -> Loaded:
    """Turn one file's bytes into documents; raises DocumentError with the reason when none
    can be read. ``source`` is the path citations show (relative to the folder ingested)."""
    suffix = path.suffix.lower()
    source = source or path.name
    if not data.strip():
        raise DocumentError("empty file")
    if suffix == ".jsonl":
        loaded = _load_jsonl(data, path, source)
    elif suffix == ".csv":
        loaded = _load_csv(data, path, source)
    else:
        loader = _LOADERS.get(suffix)
        if loader is None:
            hint = f"{_SAVE_AS[suffix]} - " if suffix in _SAVE_AS else ""
            raise DocumentError(f"{hint}unsupported file type {suffix!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        page = loader(data, path)
        loaded = Loaded([Document(document_id, page.title, page.text, source, url=page.url, pages=page.pages)])
    loaded.documents = [d for d in loaded.documents if d.text.strip()]
    if not loaded.documents:
        reasons = "; ".join(loaded.problems[:3])
        raise DocumentError(f"no text could be extracted ({reasons})" if reasons else "no text could be extracted")
    return loaded


def iter_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """Yield (root, file) for every supported file under the given files and folders, and
    every office document (.docx, .xlsx, ...): reading one says what to save it as."""
    for root in paths:
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if (
                    path.is_file()
                    and (path.suffix.lower() in SUPPORTED_SUFFIXES or path.suffix.lower() in _SAVE_AS)
                    and not any(part.startswith(".") for part in path.relative_to(root).parts)
                ):
                    yield root, path
        else:
            yield root.parent, root
