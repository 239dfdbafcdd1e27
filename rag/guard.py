"""The faithfulness guard: a generated answer is served only as far as its documents carry it.

A small model answers in the right shape with the wrong facts ("Yes, we deliver to Canada",
"Yes, they do" about gift cards that never expire, "refunds take 10 days" where the page says
5 to 7). No entailment model ships on PyPI, so the guard checks what such answers get wrong,
clause by clause, against the text the model was shown (the evidence):

- **numbers, amounts and durations** ("3 hours", "£14.95", "two weeks") must be in it;
- **named things** (a country, a product, a payment method, a place: a capitalised word
  inside the clause) must be in it;
- **content**: most of the clause's content words (stemmed) must be in it;
- **negation** must agree with the evidence clause it restates ("can be exchanged for
  cash" against "cannot be exchanged for cash");
- **polarity**: a leading "Yes" / "No" cannot be checked against a sentence (whether the
  question's wording agrees with the page's is what small models get wrong), so it is
  dropped; the statement after it must carry the answer ("Gift cards never expire.").

The answer is cut at its first clause that fails. When nothing checkable is left (the
first clause failed, a bare "Yes, they do.", the model's own "I don't know") the pipeline
serves the evidence quoted and cited instead (:meth:`rag.evidence.Evidence.quote`), or "I
don't know" if there is none.

The same :class:`ClauseGuard` runs on a whole answer and on a stream: a stream releases a
clause only once it has passed, so nothing the guard would cut ever reaches the client, and
the streamed text is exactly the final answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from .compress import WORD_PATTERN

_BOUNDARY_RE = re.compile(r"[.!?;:,](?=\s)|\n")
_LEADING_YES_NO_RE = re.compile(
    r"^\s*(?:yes|no|yeah|yep|nope|sure|of course|absolutely|certainly|correct|right|unfortunately|sorry)\b[\s,.!;:-]*",
    re.IGNORECASE,
)
_ABSTAIN_RE = re.compile(r"^\s*(?:i (?:do not|don't) know|i'm not sure|i am not sure)\b", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_NAME_RE = re.compile(r"\b[A-Z][\w&'’-]*")
_WORD_RE = re.compile(WORD_PATTERN)
_NEGATIONS = frozenset(
    "not no never cannot none nothing neither nor without can't cant don't dont doesn't doesnt isn't isnt "
    "aren't arent won't wont wasn't weren't shouldn't couldn't wouldn't didn't hasn't haven't mustn't".split()
)
_NUMBER_WORDS = {
    w: str(n)
    for n, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
} | {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "hundred": "100", "twenty-four": "24"}
_NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
# Most of a clause's content words must come from the evidence: a restatement keeps the
# page's words ("refunds take 5 to 7 business days"); an invention brings its own.
MIN_COVERAGE = 0.75


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import snowballstemmer  # type: ignore[import-untyped]

    return snowballstemmer.stemmer("english")


def _digits(text: str) -> str:
    return _NUMBER_WORD_RE.sub(lambda m: _NUMBER_WORDS[m.group(1).lower()], text)


def numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER_RE.findall(_digits(text))}


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    # sklearn's list, less the words that carry a support answer's content, plus hedges
    # that restate without adding a fact ("we only ship to ...", "usually").
    content = (
        "amount back bill call computer detail empty fill find found free front full interest move part show side top"
    )
    return (ENGLISH_STOP_WORDS - set(content.split())) | frozenset(
        "only just usually generally typically currently simply really please yes yeah okay ok sure".split()
    )


def stems(text: str) -> set[str]:
    """Content words, stemmed: no stop words, negations (checked apart) or numbers."""
    stop = _stopwords()
    words = [
        w
        for w in _WORD_RE.findall(_digits(text).lower().replace("’", "'"))
        if w not in stop and w not in _NEGATIONS and not w.endswith("n't") and not w.isdigit() and len(w) > 1
    ]
    return set(_stemmer().stemWords(words))


_TOKEN_RE = re.compile(WORD_PATTERN + r"|[.!?;:,()]")
_SCOPE = 4  # a negation reaches the next few words ("cannot be exchanged for cash")
# Bounds that turn a figure around: "within 2 hours" is not "after 2 hours".
_BOUND_RE = re.compile(
    r"\b(within|before|until|up to|under|less than|at most|no more than|by|after|over|more than|at least|from)"
    r"\s+(\d+(?:[.,]\d+)*)",
    re.IGNORECASE,
)
_UPPER = frozenset({"within", "before", "until", "up to", "under", "less than", "at most", "no more than", "by"})


def _bounds(text: str) -> set[tuple[str, str]]:
    """(upper|lower, number) for each figure with a bound before it."""
    return {
        ("upper" if word.lower() in _UPPER else "lower", number.replace(",", ""))
        for word, number in _BOUND_RE.findall(_digits(text))
    }


def negated_stems(text: str) -> tuple[set[str], set[str]]:
    """(stems in a negation's reach, stems outside one): "Gift cards never expire and can be
    used" -> ({expir}, {gift, card, use})."""
    stop = _stopwords()
    inside: set[str] = set()
    outside: set[str] = set()
    reach = 0
    for token in _TOKEN_RE.findall(_digits(text).lower().replace("’", "'")):
        if token in _NEGATIONS or token.endswith("n't"):
            reach = _SCOPE
            continue
        if not token[0].isalnum():
            reach = 0
            continue
        if token not in stop and not token.isdigit() and len(token) > 1:
            (inside if reach else outside).add(_stemmer().stemWord(token))
        reach = max(0, reach - 1)
    return inside, outside


def negated(text: str) -> bool:
    return bool(negated_stems(text)[0])


def _names(clause: str) -> set[str]:
    """Capitalised words that are not the clause's first word (nor "I")."""
    body = clause.lstrip(" \"'(“‘")
    first = re.match(r"[\w&'’-]+", body)
    found = set(_NAME_RE.findall(body[first.end() :] if first else body))
    return {n.lower().strip("'’-") for n in found if n not in ("I", "I'm", "I've", "I'll")}


# Evidence is cut into clauses where a new statement starts, not at every comma: "After 2
# hours, or once ..., the order can no longer be cancelled" is one statement.
_SUPPORT_CLAUSE_RE = re.compile(
    r"(?<=[.!?])\s+|;\s+|\n|,\s+(?=(?:as long as|unless|but|although|though|because|whereas|except|so that)\b)"
    r"|\s+\((?=[a-z])|\)",
    re.IGNORECASE,
)


# A figure and what it counts: "2 business days" -> ("2", "busi"), "£9.95" -> ("9.95", "£"),
# "5 to 7 business days" -> ("5", "busi"), ("7", "busi").
_FIGURE_RE = re.compile(
    r"([£$€])?\s?(\d+(?:[.,]\d+)*)(?=((?:\s*(?:to|-|–|or|and)\s*[£$€]?\d+(?:[.,]\d+)*)*)\s*([^\W\d_]+)?)"
)


def figures(text: str) -> set[tuple[str, str]]:
    """(number, unit) for each figure: the currency before it, else the word after it (after a
    range's last number), stemmed."""
    found = set()
    for match in _FIGURE_RE.finditer(_digits(text)):
        currency, number, _, word = match.groups()
        unit = currency or (_stemmer().stemWord(word.lower()) if word else "")
        found.add((number.replace(",", ""), unit))
    return found


@dataclass
class _Clause:
    stems: set[str]
    negated: set[str]  # stems only ever inside a negation's reach
    bounds: set[tuple[str, str]]
    numbers: set[str]
    figures: set[tuple[str, str]] = field(default_factory=set)


def _clause(text: str) -> _Clause:
    inside, outside = negated_stems(text)
    return _Clause(stems(text), inside - outside, _bounds(text), numbers(text), figures(text))


@dataclass
class Support:
    """What the answer may say: the evidence text, indexed once per answer."""

    texts: Sequence[str]
    lowered: str = ""
    numbers: set[str] = field(default_factory=set)
    stems: set[str] = field(default_factory=set)
    clauses: list[_Clause] = field(default_factory=list)

    def __post_init__(self) -> None:
        joined = "\n".join(self.texts)
        self.lowered = joined.lower().replace("’", "'")
        self.numbers = numbers(joined)
        self.stems = stems(joined)
        for text in self.texts:
            for piece in _SUPPORT_CLAUSE_RE.split(text):
                if piece and piece.strip():
                    clause = _clause(piece)
                    if clause.stems or clause.numbers:
                        self.clauses.append(clause)

    def has_name(self, name: str) -> bool:
        return re.search(rf"(?<![\w]){re.escape(name)}", self.lowered) is not None

    def swapped(self, answer: _Clause) -> str | None:
        """A figure the answer gives something the documents give another figure of the same
        kind: "Refunds are processed within 2 business days" where the 2 business days are
        the inspection's and refunds take 5 to 7 business days. What, or None."""
        for number, unit in answer.figures:
            if not unit:
                continue
            homes = [c for c in self.clauses if (number, unit) in c.figures]
            if not homes:
                continue
            said_there = set().union(*(c.stems for c in homes))
            for other in self.clauses:
                if other in homes or not any(u == unit and n != number for n, u in other.figures):
                    continue
                owned = (answer.stems - said_there - {unit}) & other.stems
                if owned:
                    return f"{', '.join(sorted(owned))} ({number} {unit})"
        return None

    def aligned(self, answer: _Clause) -> _Clause | None:
        """The evidence clause this one restates: most shared words, a shared figure counting
        double; None when it restates none (fewer than two shared words, or under half)."""
        best, overlap, closeness = None, 0, 0.0
        for other in self.clauses:
            shared = len(answer.stems & other.stems)
            figures = len(answer.numbers & other.numbers) + len(answer.bounds & other.bounds)
            score = shared / (len(answer.stems | other.stems) or 1) + figures
            if score > closeness:
                best, overlap, closeness = other, shared, score
        if best is not None and (
            answer.numbers & best.numbers or (overlap >= min(2, len(answer.stems)) and overlap * 2 >= len(answer.stems))
        ):
            return best
        return None


def check_clause(clause: str, support: Support) -> str | None:
    """Why ``clause`` is not supported, or None if it is."""
    if _ABSTAIN_RE.match(clause):
        return "the model did not answer"
    facts = _clause(clause)
    missing = facts.numbers - support.numbers
    if missing:
        return f"numbers not in the documents: {', '.join(sorted(missing))}"
    names = {n for n in _names(clause) if not support.has_name(n)}
    if names:
        return f"names not in the documents: {', '.join(sorted(names))}"
    if facts.stems:
        coverage = len(facts.stems & support.stems) / len(facts.stems)
        if coverage < MIN_COVERAGE:
            return f"words not in the documents: {', '.join(sorted(facts.stems - support.stems))}"
    inside, _ = negated_stems(clause)
    for other in support.clauses:
        # The documents deny what the clause asserts about the same things: "you can return
        # an unwrapped mattress" against "mattresses that have been unwrapped ... cannot be
        # returned" (two more words in common than the denied one, so it is about them).
        if any((side, n) not in other.bounds and n in {m for _, m in other.bounds} for side, n in facts.bounds):
            continue  # another condition on the same figure ("after 2 hours" is not "within 2 hours")
        denied = (facts.stems & other.negated) - inside
        if denied and len((facts.stems & other.stems) - other.negated) >= 2:
            return f"the documents say the opposite ({', '.join(sorted(denied))})"
    swapped = support.swapped(facts)
    if swapped:
        return f"the documents give another figure for {swapped}"
    aligned = support.aligned(facts)
    if aligned is not None:
        flipped = (facts.stems & aligned.stems) & (aligned.negated ^ inside)
        if flipped:
            return f"negation differs from the documents ({', '.join(sorted(flipped))})"
        turned = {n for side, n in facts.bounds if (side, n) not in aligned.bounds and n in aligned.numbers}
        turned = {n for n in turned if any(b[1] == n for b in aligned.bounds)}
        if turned:
            return f"the condition on {', '.join(sorted(turned))} differs from the documents"
    return None


def _has_content(clause: str) -> bool:
    return bool(stems(clause) or numbers(clause))


class ClauseGuard:
    """Feed an answer in pieces (or whole); get back the text that may be released.

    Only clauses with something to check (content words, numbers) are released: "they do",
    "you can" state nothing the evidence could confirm, and a leading "Yes" / "No" is dropped.

    >>> guard = ClauseGuard(["Gift cards never expire and can be used on any product."])
    >>> guard.feed("Yes, they do. Gift cards never expire.") + guard.close()
    'Gift cards never expire.'
    >>> check("Yes, gift cards expire after 12 months.", ["Gift cards never expire."]).reason
    'numbers not in the documents: 12'
    """

    def __init__(self, support: Sequence[str]) -> None:
        self._support = Support(support)
        self._pending = ""  # text not judged yet
        self._boundary = ""  # the punctuation after the last released clause
        self._released: list[str] = []
        self.reason: str | None = None
        self.closed = False
        self.failed_at_end = False
        """The answer failed only at its end: its last clause (which a max_tokens or a stop
        sequence may have cut) or nothing checkable at all."""

    @property
    def text(self) -> str:
        return "".join(self._released).strip()

    @property
    def replaced(self) -> bool:
        """Nothing of the answer stands: serve the quote (or "I don't know") instead."""
        return not self._released

    def feed(self, piece: str) -> str:
        if self.reason is not None or self.closed:
            return ""
        self._pending += piece
        out: list[str] = []
        while self.reason is None:
            match = _BOUNDARY_RE.search(self._pending)
            if match is None:
                break
            clause, boundary = self._pending[: match.start()], match.group().strip()
            self._pending = self._pending[match.end() :]
            out.append(self._judge(clause, boundary))
        return "".join(out)

    def close(self) -> str:
        """The end of the answer: judge what is left and end the last sentence."""
        if self.closed:
            return ""
        self.closed = True
        passing = self.reason is None
        out = ""
        last = self._pending.rstrip()
        if self.reason is None and last.strip():
            end = last[-1] if last[-1] in ".!?" else ""
            out = self._judge(last[: len(last) - len(end)], end)
        if self._released:
            end = self._boundary if self._boundary in (".", "!", "?") else "."
            self._released.append(end)
            out += end
        elif self.reason is None:
            self.reason = "the model did not state a checkable answer"
        self.failed_at_end = passing and self.reason is not None
        return out

    def _judge(self, clause: str, boundary: str) -> str:
        first = not self._released
        if first:
            clause = _LEADING_YES_NO_RE.sub("", clause, count=1)
        if not _has_content(clause):
            return ""  # nothing to check, nothing said: not released
        why = check_clause(clause, self._support)
        if why is not None:
            self.reason = why
            return ""
        if first:
            clause = clause.strip()
            text = clause[:1].upper() + clause[1:]
        else:
            text = self._boundary + clause
        self._released.append(text)
        self._boundary = boundary
        return text


@dataclass
class Verdict:
    text: str
    """What of the answer may be served ("" when nothing)."""
    reason: str | None
    """Why the answer was cut or replaced (None: it stood whole)."""

    @property
    def replaced(self) -> bool:
        return not self.text


def check(answer: str, support: Sequence[str]) -> Verdict:
    """:class:`ClauseGuard` on a whole answer."""
    guard = ClauseGuard(support)
    guard.feed(answer)
    guard.close()
    return Verdict(guard.text, guard.reason)
