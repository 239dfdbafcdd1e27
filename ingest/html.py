"""HTML pages to text: the article, not the page around it.

A help-centre export (Zendesk, Intercom, Freshdesk, a saved web page) wraps every article in
a cookie banner, navigation, breadcrumbs, "Articles in this section", "Was this article
helpful? 122 out of 222 found this helpful", related articles, a comment box and a footer.
Kept, they are quoted to customers as answers, and a vote count that changes every day
re-indexes the article. trafilatura finds the main content (tables kept, as Markdown rows;
headings as lines of their own) and the article's own title (its ``og:title`` or heading,
without the site's name). A page it finds no main content in (a bare fragment, a page of
nothing but a table) is read whole, as before: tags dropped, blocks on lines of their own.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

_BLOCK_TAGS = [
    "p", "div", "section", "article", "main", "header", "aside", "h1", "h2", "h3", "h4", "h5", "h6",
    "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "blockquote", "pre", "hr", "figure", "figcaption",
]  # fmt: skip


logging.getLogger("trafilatura").setLevel(logging.ERROR)  # "not enough text" is not the run's news


def html_to_text(html: str, path: Path) -> tuple[str, str, str]:
    """(title, text, url) of a page: its main content where one can be found, else all of
    it; the url is its canonical address (``<link rel="canonical">``, ``og:url``), or ""."""
    import trafilatura

    text = trafilatura.extract(
        html,
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        favor_recall=True,
        output_format="markdown",
        deduplicate=False,
    )
    meta = trafilatura.extract_metadata(html)
    url = (meta.url if meta else None) or ""
    if not text or not text.strip():
        return (*_whole_page(html, path), url)
    title = (meta.title if meta and meta.title else "") or _whole_page(html, path)[0]  # parsed whole only if needed
    text = re.sub(r"\*\*|__", "", text)  # emphasis: noise to a reader of quotes
    text = "\n\n".join(_unwrap(block) for block in re.split(r"\n\s*\n", text) if block.strip())
    return title, text if text.lstrip("# ").startswith(title) else f"{title}\n\n{text}", url


_STRUCTURED_LINE_RE = re.compile(r"\s*(?:\||[-*•+]\s|\d+[.)]\s|#)")


def _unwrap(block: str) -> str:
    """A paragraph on one line: its line breaks are the page source's, which mean nothing in
    HTML (and a short wrapped piece would read as a heading). Tables, lists, headings stay."""
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    return "\n".join(lines) if any(_STRUCTURED_LINE_RE.match(line) for line in lines) else " ".join(lines)


def _whole_page(html: str, path: Path) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "nav", "footer", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    body = soup.body or soup
    for cell in body.find_all(["td", "th"]):
        cell.append(" | ")
    for node in body.find_all(string=True):  # source line breaks mean nothing in HTML
        node.replace_with(re.sub(r"\s+", " ", str(node)))
    for block in body.find_all(_BLOCK_TAGS):
        block.insert_before("\n")
        block.insert_after("\n")
    for br in body.find_all("br"):
        br.replace_with("\n")
    text = body.get_text()
    text = "\n".join(" ".join(line.split()) for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not title:
        heading = body.find(["h1", "h2"])
        title = heading.get_text(strip=True) if heading else path.stem
    return title, text
