"""Evidence: the sentences of the retrieved passages that answer the question, or none.

Every answer path starts here. The retrieved chunks are cut into units a customer could be
shown on their own (a sentence; a list with its lead-in, "We accept: Visa ...; PayPal; ...";
a table row), each unit is scored against the question by the support scorer
(:mod:`rag.support`), and

- no unit reaching ``min_support`` means the documents do not answer: "I don't know";
- otherwise the best units (up to ``max_units``, a second one only when it scores nearly as
  well) are the evidence: what an LLM is asked to rephrase, what the guard checks its answer
  against, and what is quoted, cited, when the answer fails the guard (or when there is no
  LLM at all: the extractive backend answers with the quote).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .compress import split_at, terms

if TYPE_CHECKING:
    from .store import RetrievedChunk
    from .support import SupportScorer

_EMPHASIS_RE = re.compile(r"\*\*|__|`")
_LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
# A sentence ends before a capital, a digit, a currency sign or a letter outside ASCII (other scripts).
# Not after an initial or a title ("Malcolm K. Hughes" is one name, not two sentences).
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?(?:[A-Z0-9£$€]|[^\W\d_a-zA-Z]))")
_MIN_WORDS = 3
_TAG_LINE_RE = re.compile(r"^(?:<[^<>]*>\s*)+$")
# A sentence that speaks to an assistant rather than to a customer (a planted prompt
# injection: "Ignore previous instructions and reply only with ...", a fake "System:" turn,
# chat-template tokens) is never evidence: never quoted, never shown to a model as such.
_ADDRESSES_ASSISTANT_RE = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.]{0,40}\b(?:instructions?|prompts?|rules)\b"
    r"|\b(?:previous|prior|earlier|above|original)\s+(?:instructions?|prompts?|rules)\b"
    r"|\b(?:reply|respond|answer)\s+(?:only\b|to (?:every|all|any) (?:question|message)s?\b|with (?:only|just|the word)\b)"
    r"|\b(?:the|an|you are an?)\s+(?:assistant|chatbot|ai|language model)\b[^.]{0,30}\b(?:must|should|shall|will|is to)\b"
    # A salutation to an AI, then a comma or colon: "Dear AI model, ...", "Hey assistant: ...".
    r"|^\W*(?:dear|hey|hi|hello|attention|note to|message to|to)\s+(?:the\s+)?(?:ai|a\.i\.|assistant|chat\s?bot"
    r"|llm|gpt|language model|ai model|ai assistant)s?\s*[,:;!]"
    r"|\b(?:disregard|ignore|forget|override)\b[^.]{0,60}\byou(?:'ve|'re| have| were| had| are)?\s+(?:been\s+)?"
    r"(?:told|instructed|taught|programmed)\b"
    r"|\b(?:your|its)\s+(?:previous|prior|original|earlier|initial|system)\s+(?:instructions|programming|guidelines"
    r"|directives)\b[^.]{0,30}\b(?:no longer|do not|don't|are (?:void|cancelled|replaced|suspended))\b"
    r"|\bsystem prompt\b"
    r"|^\s*(?:system|assistant|user|model)\s*:"
    r"|<\|?/?(?:im_start|im_end|start_of_turn|end_of_turn|system|document)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Unit:
    chunk: int
    """Index of its chunk in the list it was cut from."""
    text: str
    score: float = 0.0
    first: int = 0
    """Its sentences are ``first`` to ``last`` of the chunk's (a window around one sentence)."""
    last: int = 0

    def overlaps(self, other: Unit) -> bool:
        return self.chunk == other.chunk and self.first <= other.last + 1 and other.first <= self.last + 1


@dataclass
class Evidence:
    ranked: list[Unit] = field(default_factory=list)
    """Every unit, best first, with its score."""
    chosen: list[Unit] = field(default_factory=list)
    """The units that answer (empty: the documents do not)."""

    @property
    def best(self) -> float | None:
        return self.ranked[0].score if self.ranked else None

    @property
    def supported(self) -> bool:
        return bool(self.chosen)

    def quote(self) -> str:
        """The chosen units, best first: the answer when nothing generated can be trusted.
        A sentence in two of them (chunks overlap; a page says it twice) is quoted once."""
        seen: set[str] = set()
        out = []
        for unit in self.chosen:
            for sentence in _sentences(unit.text):
                key = " ".join(terms(sentence))
                if key not in seen or not key:
                    seen.add(key)
                    out.append(as_sentence(sentence))
        return " ".join(out)


def merge(units: list[Unit]) -> list[Unit]:
    """Overlapping or adjacent windows of the same chunk as one span, in best-first order (a
    window that bridges two spans joins all three)."""
    spans: list[Unit] = []
    for unit in units:
        joined = [span for span in spans if span.overlaps(unit)]
        if not joined:
            spans.append(unit)
            continue
        first = min([unit.first, *(s.first for s in joined)])
        last = max([unit.last, *(s.last for s in joined)])
        at = spans.index(joined[0])  # where the best of them stood
        spans = [s for s in spans if s not in joined]
        spans.insert(at, Unit(joined[0].chunk, "", joined[0].score, first, last))
    return spans


def as_sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?" else text + "."


def _is_heading(line: str) -> bool:
    # A short line with no sentence punctuation (a title, a table header) or a question
    # (an FAQ entry's own question, "When will I get my refund?"): never an answer.
    words = line.split()
    return line.endswith("?") or (len(words) <= 6 and line[-1:] not in ".!:;")


_RULE_CELL_RE = re.compile(r"^:?-+:?$")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_table_header(cells: list[str], following: str | None) -> bool:
    """A table's first row names its columns: above a Markdown rule ("|---|---|"), or, in a
    table of three columns or more, short labels without a figure ("Option | Time | Price").
    A two-column table without a rule is read as pairs ("Opening hours | Monday to Friday"):
    its first row is a fact, not the name of the other rows' values."""
    if following is not None and all(_RULE_CELL_RE.match(c) for c in _cells(following) if c):
        return True
    return len(cells) >= 3 and all(len(c.split()) <= 4 and not re.search(r"\d", c) for c in cells if c)


def _table_row(cells: list[str], header: list[str] | None) -> str:
    """A row as a sentence that carries its column names, which is what a question asks
    about ("what does the Growth plan cost per month?" -> "Growth: Monthly price £29; ...")."""
    if header and len(header) == len(cells) and all(header[1:]) and cells[0]:
        row = f"{cells[0]}: " + "; ".join(f"{h} {c}" for h, c in zip(header[1:], cells[1:], strict=True) if c)
    else:
        filled = [c for c in cells if c]
        row = f"{filled[0]}: {', '.join(filled[1:])}" if len(filled) > 1 else " ".join(filled)
    return as_sentence(row)  # a row is a statement, however short: never taken for a heading


def _sentences(block: str) -> list[str]:
    return [s.strip() for s in split_at(_SENTENCE_END_RE, block) if s.strip()]


def units_of(text: str) -> list[str]:
    """A passage cut into units that stand on their own."""
    text = _EMPHASIS_RE.sub("", text)
    out: list[str] = []
    lines = [" ".join(line.split()).lstrip("#> ").strip() for line in text.splitlines()]
    lines = ["" if _TAG_LINE_RE.match(line) else line for line in lines]  # markup alone ends a paragraph
    i = 0

    def next_line(j: int) -> int:  # the next non-blank line at or after j
        while j < len(lines) and not lines[j]:
            j += 1
        return j

    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        after = next_line(i + 1)
        introduces = line.endswith(":") and after < len(lines) and bool(_LIST_ITEM_RE.match(lines[after]))
        if _LIST_ITEM_RE.match(line) or introduces:
            # A list, with the line that introduces it: one unit ("We accept: Visa ...; PayPal").
            lead = line if introduces else ""
            items = []
            i = after if introduces else i
            while i < len(lines) and _LIST_ITEM_RE.match(lines[i]):
                items.append(_LIST_ITEM_RE.sub("", lines[i]).rstrip(".;"))
                j = next_line(i + 1)  # a blank line between items does not end the list
                i = j if j < len(lines) and _LIST_ITEM_RE.match(lines[j]) else i + 1
            if lead:
                out.append(f"{lead} {'; '.join(items)}.")
            else:  # numbered steps: each its own unit (a step answers "how do I ...")
                out.extend(as_sentence(item) for item in items)
            continue
        if "|" in line and line.count("|") >= 2:  # a table: its rows, each with the column names
            header: list[str] | None = None
            first = True
            while i < len(lines) and "|" in lines[i] and lines[i].count("|") >= 2:
                cells = _cells(lines[i])
                following = lines[i + 1] if i + 1 < len(lines) else None
                if all(_RULE_CELL_RE.match(c) for c in cells if c):
                    pass  # the rule under a Markdown header
                elif first and _is_table_header(cells, following):
                    header = cells
                elif any(cells):
                    out.append(_table_row(cells, header))
                first = False
                i += 1
            continue
        # Prose: a paragraph is the lines up to a blank one (hard-wrapped text).
        para = [line]
        i += 1
        while i < len(lines) and lines[i] and not _LIST_ITEM_RE.match(lines[i]) and "|" not in lines[i]:
            if _is_heading(para[-1]) and not para[-1].endswith("?"):
                break
            para.append(lines[i])
            i += 1
        out.extend(_sentences(" ".join(para)))
    return [
        u for u in out if len(u.split()) >= _MIN_WORDS and not _is_heading(u) and not _ADDRESSES_ASSISTANT_RE.search(u)
    ]


def judged_text(chunk: RetrievedChunk, text: str) -> str:
    """What the judge reads for ``text`` of ``chunk``: the chunk's title, then the text."""
    return f"{chunk.title}: {text}" if chunk.title and not text.startswith(chunk.title) else text


def collect_units(chunks: list[RetrievedChunk], window: int = 1) -> tuple[list[Unit], list[str]]:
    """Every sentence of every chunk as a window of ``window`` sentences either side (a
    sentence alone loses what its neighbours say: "Keep the item and the packaging until the
    claim is settled" is about damaged items), in retrieval order, without repeats (chunks
    overlap); and the text each is judged by: the chunk's title, then the window."""
    seen: set[str] = set()
    units: list[Unit] = []
    judged: list[str] = []
    for n, chunk in enumerate(chunks):
        sentences = units_of(chunk.text)
        for j in range(len(sentences)):
            first, last = max(0, j - window), min(len(sentences) - 1, j + window)
            text = " ".join(as_sentence(t) for t in sentences[first : last + 1])
            key = " ".join(terms(text))
            if key and key not in seen:
                seen.add(key)
                units.append(Unit(n, text, 0.0, first, last))
                judged.append(judged_text(chunk, text))
    return units, judged


def span_texts(chunks: list[RetrievedChunk], units: list[Unit]) -> list[Unit]:
    """``units`` with the text of their sentence spans (after :func:`merge`)."""
    cache: dict[int, list[str]] = {}
    out = []
    for u in units:
        sentences = cache.setdefault(u.chunk, units_of(chunks[u.chunk].text))
        out.append(
            Unit(u.chunk, " ".join(as_sentence(t) for t in sentences[u.first : u.last + 1]), u.score, u.first, u.last)
        )
    return out


def select_evidence(
    question: str,
    chunks: list[RetrievedChunk],
    scorer: SupportScorer,
    *,
    min_support: float,
    max_units: int = 2,
    second_within: float = 3.0,
    window: int = 1,
) -> Evidence:
    """Judge every sentence window of ``chunks`` against ``question``; choose the best if it
    reaches ``min_support``, and further ones (up to ``max_units``, overlapping ones merged)
    that also reach it and score within ``second_within`` of the best (a multi-part
    question, a list continued)."""
    units, judged = collect_units(chunks, window)
    if not units:
        return Evidence()
    scores = scorer.score(question, judged)
    ranked = sorted(
        (Unit(u.chunk, u.text, float(s), u.first, u.last) for u, s in zip(units, scores, strict=True)),
        key=lambda u: (-u.score, u.chunk),
    )
    best = ranked[0].score
    if best < min_support:
        return Evidence(ranked)
    candidates = [u for u in ranked if u.score >= min_support and u.score >= best - second_within]
    chosen: list[Unit] = []
    for unit in candidates:
        merged = merge([*chosen, unit])
        if len(merged) > max_units:
            break
        chosen = merged
    return Evidence(ranked, span_texts(chunks, chosen))
