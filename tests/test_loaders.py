import json
from pathlib import Path

import pytest

from ingest.chunker import Chunker
from ingest.loaders import iter_files, load_file
from rag.errors import DocumentError
from rag.evidence import units_of

from .conftest import EXAMPLES, FIXTURES, make_pdf


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
    [doc] = load_file(path, path.read_bytes(), document_id=name).documents
    assert doc.title == title
    assert needle in doc.text
    assert doc.document_id == name


def test_html_drops_scripts_styles_and_navigation() -> None:
    path = EXAMPLES / "shipping-times.html"
    [doc] = load_file(path, path.read_bytes(), document_id="x").documents
    assert "analytics" not in doc.text and "font-family" not in doc.text and "Help centre" not in doc.text


def test_a_help_desk_export_gives_the_article_not_the_page_around_it() -> None:
    """A Zendesk-style page: cookie banner, status strip, breadcrumbs, sidebar, vote widget,
    related articles, comments and footer around one article with a table."""
    path = FIXTURES / "exports" / "helpdesk-article.html"
    [doc] = load_file(path, path.read_bytes(), document_id="x").documents
    assert doc.title == "Ledgerly plans and pricing"  # not "... - Ledgerly Help Center"
    assert doc.url == "https://help.ledgerly.io/hc/en-us/articles/360011111103-Ledgerly-plans-and-pricing"  # canonical
    for clutter in ("cookies", "found this helpful", "System status", "sign in to leave a comment",
                    "Related articles", "Powered by", "Articles in this section", "Skip to main content"):  # fmt: skip
        assert clutter.lower() not in doc.text.lower(), clutter
    assert "Registered charities get 50% off" in doc.text and "Downgrades take effect" in doc.text
    rows = [u for u in units_of(doc.text) if u.startswith("Growth:")]
    assert rows == ["Growth: Monthly price £29; Annual price (per month) £24; Invoices per month 500; Team members 5."]


def test_jsonl_keeps_document_ids() -> None:
    path = EXAMPLES / "store-policies.jsonl"
    loaded = load_file(path, path.read_bytes(), document_id="ignored", source="policies/store-policies.jsonl")
    docs = loaded.documents
    assert [d.document_id for d in docs] == ["policy-price-match", "policy-privacy", "policy-assembly"]
    assert docs[0].title == "Price match promise"
    assert {d.source for d in docs} == {"policies/store-policies.jsonl"} and loaded.problems == []


def test_jsonl_lines_without_ids_keep_theirs_when_a_line_is_added_above() -> None:
    """Named by their text: an FAQ entry added at the top renames no other (by line number,
    every id after it would have named another entry, and its citations with it)."""
    lines = [b'{"question": "Do you have a showroom?", "answer": "Yes, in Leeds."}',
             b'{"question": "Can I pay by cheque?", "answer": "No."}']  # fmt: skip
    before = load_file(Path("faq.jsonl"), b"\n".join(lines), document_id="faq.jsonl").documents
    added = b'{"question": "Do you sell rugs?", "answer": "Yes."}'
    after = load_file(Path("faq.jsonl"), b"\n".join([added, *lines]), document_id="faq.jsonl").documents
    assert [d.document_id for d in after[1:]] == [d.document_id for d in before]
    assert before[0].document_id.startswith("faq:") and len({d.document_id for d in after}) == 3
    twice = load_file(Path("faq.jsonl"), b"\n".join([lines[0], lines[0]]), document_id="faq.jsonl")
    assert len(twice.documents) == 1 and "line 2 repeats the id" in twice.problems[0]


def test_jsonl_keeps_its_good_lines_and_reports_each_bad_one_by_number() -> None:
    data = (
        b'{"id": "a", "text": "Refunds take 5 days."}\n'
        b"not json\n"
        b'{"id": "a", "text": "A second line with the first id."}\n'
        b'{"id": "b", "title": "no text here"}\n'
        b"[1, 2]\n"
        b'{"id": "c", "text": "Gift cards never expire."}\n'
    )
    loaded = load_file(Path("faq.jsonl"), data, document_id="faq.jsonl")
    assert [d.document_id for d in loaded.documents] == ["a", "c"]
    assert loaded.documents[0].text == "Refunds take 5 days."  # the first of a repeated id wins
    assert [p.split(" ", 2)[:2] for p in loaded.problems] == [
        ["line", "2"],
        ["line", "3"],
        ["line", "4"],
        ["line", "5"],
    ]
    assert "not JSON" in loaded.problems[0] and "repeats the id 'a' of line 1" in loaded.problems[1]
    assert 'no "text"' in loaded.problems[2] and "not an object" in loaded.problems[3]


def test_a_jsonl_line_may_hold_unicode_line_separators() -> None:
    # JSON lets U+2028, U+2029 and U+0085 stand unescaped in a string; only "\n" ends a line.
    text = "Opening hours:\u2028Mon-Fri 9-5.\u2029Closed on public holidays.\x85Call us."
    data = (json.dumps({"id": "hours", "text": text}, ensure_ascii=False) + "\r\n").encode()
    data += b'{"id": "next", "text": "Gift cards never expire."}\n'
    loaded = load_file(Path("faq.jsonl"), data, document_id="faq.jsonl")
    assert [d.document_id for d in loaded.documents] == ["hours", "next"] and not loaded.problems
    assert "Closed on public holidays" in loaded.documents[0].text


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.md", b"  \n", "empty file"),
        ("binary.txt", b"\x00\x01\x02 binary junk", "binary"),
        ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "UTF-8"),
        ("broken.pdf", b"%PDF-1.4\n this is not really a pdf", "PDF"),
        ("bad.jsonl", b"not json\n[]\n", "no text could be extracted .line 1 is not JSON.*line 2 is not an object"),
        ("notext.jsonl", b'{"id": "a", "title": "t"}\n', "text"),
        ("faq.csv", b"category,owner\nbilling,ann\n", "header row naming its columns: question and answer"),
        ("FAQ.xlsx", b"PK\x03\x04", "a spreadsheet: save it as CSV"),
        ("guide.docx", b"PK\x03\x04", "save or download it as PDF, HTML or Markdown"),
        ("scan.pdf", make_pdf([[]]), "no text in its 1 page.*run OCR"),
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
    (tmp_path / "FAQ.xlsx").write_bytes(b"PK\x03\x04")  # found, so that reading it says what to save it as
    found = [p.relative_to(tmp_path).as_posix() for _, p in iter_files([tmp_path])]
    assert found == ["FAQ.xlsx", "a/b/deep.md"]


def test_a_csv_faq_is_one_document_a_row_and_a_bad_row_is_reported_by_number() -> None:
    data = (
        "\ufeffCategory;Question;Answer;Owner;URL\n"  # Excel's "CSV UTF-8": a byte-order mark, semicolons
        'billing;Can I pay by bank transfer?;"Yes, on annual plans; by BACS.";ann;https://help.example.com/bacs\n'
        "billing;Do you charge VAT?;;ann;\n"
        "\n"
        "account;How do I delete my account?;Settings > Account > Delete.;bo;javascript:alert(1)\n"
    ).encode()
    loaded = load_file(Path("support faq.csv"), data, document_id="support faq.csv")
    assert [d.title for d in loaded.documents] == ["Can I pay by bank transfer?", "How do I delete my account?"]
    assert loaded.documents[0].text == "Can I pay by bank transfer?\nYes, on annual plans; by BACS."
    assert loaded.problems == ["row 3 has no answer"]
    assert [d.url for d in loaded.documents] == ["https://help.example.com/bacs", ""]  # only a web address
    again = load_file(Path("support faq.csv"), data, document_id="support faq.csv")
    assert [d.document_id for d in again.documents] == [d.document_id for d in loaded.documents]  # stable ids


def test_markdown_front_matter_gives_the_title_and_is_not_text() -> None:
    data = b"---\ntitle: Setting up recurring invoices\nslug: recurring\ntags: [billing]\nauthor: tom.b\nurl: https://help.example.com/recurring\n---\n\nRecurring invoices are sent on a schedule.\n"
    [doc] = load_file(Path("recurring-invoices.md"), data, document_id="x").documents
    assert doc.title == "Setting up recurring invoices" and doc.url == "https://help.example.com/recurring"
    assert "tom.b" not in doc.text and "slug" not in doc.text and "Recurring invoices are sent" in doc.text
    rule = b"---\nA paragraph after a rule.\n---\n# Heading\nText.\n"  # a rule, not front matter
    assert load_file(Path("r.md"), rule, document_id="r").documents[0].text.startswith("---")


def test_a_pdf_loses_its_running_header_footer_and_page_numbers_and_keeps_sentences_whole() -> None:
    header, footer = (
        "Acme Ltd - Customer Terms - Version 3.2 CONFIDENTIAL",
        "Acme Ltd, registered in England. Page {n} of 4",
    )
    body = [
        ["Refunds are paid within 14 days. This clause should be read together with the rest of"],
        ["these terms. Deliveries take 3 to 5 business days."],
        ["Cancel any time from your account page."],
        ["These terms are governed by the laws of England."],
    ]
    pages = [[header, *lines, footer.format(n=n)] for n, lines in enumerate(body, start=1)]
    [doc] = load_file(Path("terms.pdf"), make_pdf(pages), document_id="terms.pdf").documents
    assert "CONFIDENTIAL" not in doc.text and "Page" not in doc.text and "registered in England" not in doc.text
    assert "read together with the rest of these terms." in doc.text  # across the page break
    assert "governed by the laws of England" in doc.text
    # A figure on a line of its own and a numbered heading at the top of each page are text.
    bodies = [("Refunds", "30", "days from delivery."), ("Exchanges", "14", "days to swap a size."),
              ("Repairs", "90", "days of free repairs.")]  # fmt: skip
    section = [[f"Section {n}", *body, f"Page {n} of 3"] for n, body in enumerate(bodies, start=1)]
    [doc] = load_file(Path("policy.pdf"), make_pdf(section), document_id="policy.pdf").documents
    assert all(f"Section {n}" in doc.text for n in (1, 2, 3)), doc.text
    assert all(f"\n{figure}\n" in doc.text for figure in ("30", "14", "90")), doc.text
    assert "Page" not in doc.text


def test_a_pdf_passage_knows_the_page_it_begins_on() -> None:
    """A citation names the page of a PDF (and the widget opens it there): each chunk carries
    the page its text begins on, counting a page with no text, and a sentence over a page
    break belongs to the page it begins on."""
    pages = [
        [f"Delivery rule {n}: parcels of size {n} arrive within {n} days." for n in range(1, 7)],
        [],  # a blank page (no text layer) still counts
        ["Returns rule one: send it back within 30 days of delivery, unused and in its box, with"],
        ["the receipt. Refunds reach the card in 5 to 7 business days after we inspect the item."],
        [f"Warranty rule {n}: frames are covered for {n} years against defects." for n in range(1, 7)],
    ]
    [doc] = load_file(Path("terms.pdf"), make_pdf(pages), document_id="terms.pdf").documents
    chunks = Chunker(chunk_size=150, chunk_overlap=30).split(doc)
    assert len(chunks) >= 6
    for chunk in chunks:
        first = chunk.text.split(".")[0][:25]
        where = next(n for n, lines in enumerate(pages, start=1) if any(first in line for line in lines))
        assert chunk.page == where, (chunk.page, chunk.text)
    assert {c.page for c in chunks} == {1, 3, 4, 5}  # the blank page 2 begins no chunk
    # A sentence that runs on over a blank page is whole, and its first page's.
    over_blank = [pages[2], [], pages[3]]
    [doc] = load_file(Path("t.pdf"), make_pdf(over_blank), document_id="t.pdf").documents
    first, second = Chunker(chunk_size=150, chunk_overlap=30).split(doc)
    assert (first.page, first.text.endswith("with the receipt.")) == (1, True), first
    assert (second.page, second.text.startswith("Refunds reach")) == (3, True), second
    assert Chunker(800, 120).split(load_file(Path("a.md"), b"# A\nText.", document_id="a.md").documents[0])[0].page == 0
