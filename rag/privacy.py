"""Payment card numbers out of a customer's text, before anything answers, logs or stores it.

A customer who pastes a card ("my card 4111 1111 1111 1111 exp 12/25 cvv 123 was charged
twice") must not have it kept in the answer log, the cache's keys, a job, a handoff or the
report (PCI DSS forbids keeping it), and no answer needs it. The one place that decides what a
card number is: the HTTP bodies (``serving.schemas.RequestBody``), the pipeline's question (the
CLI's ``rag ask`` and ``rag batch``) and the curated answers all go through it.

A card number is written as cards print it: 13 to 19 digits in one piece, or 4-4-4-4,
4-4-4-4-3, 4-6-5 (Amex) or 4-6-4 (Diners) groups split by one kind of separator (a space, a
dash, a dot); digits of any script; invisible characters (a zero-width space, a soft hyphen)
ignored. It starts 2-6, as the card schemes' numbers do, and passes the Luhn check (15 digits
only as an Amex, 34 or 37: a phone's IMEI has 15 digits and the same check digit). Dates,
phone numbers, prices and tracking numbers are grouped otherwise, or run on past a card's
length, and an IBAN is left alone. An expiry or a security code right after a card goes with
it, and a code named as one ("CVV 123", "cvv is 123") is replaced too. Only those characters
change: the rest of the text is kept exactly as written.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CARD_NUMBER = "[card number]"
SECURITY_CODE = "[security code]"

# Characters a paste from a web page or a PDF hides between digits: ignored.
_INVISIBLE = frozenset("\u00ad\u200b\u200c\u200d\u2060\ufeff")
# One separator between groups: a space of any width, a dash, a dot, or " - ".
_SPACES = " \u00a0\u2000-\u200a\u202f\u205f\u3000"
_DASHES = "\\-\u2010-\u2015"
_RUN_RE = re.compile(rf"\d+(?:(?:[{_SPACES}][{_DASHES}][{_SPACES}]|[{_SPACES}{_DASHES}.])\d+)*")
_GROUP_RE = re.compile(r"\d+")
_DIGIT_RE = re.compile(r"\d")
_INVISIBLE_RE = re.compile(f"[{''.join(sorted(_INVISIBLE))}]")
# The groupings cards are printed in (one piece of 13-19 digits is checked apart).
_SHAPES = ((4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4))
_LONGEST = max(map(len, _SHAPES))
# An IBAN ("DE89 3704 0044 0532 0130 00"): its digits are no card.
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
# After a card: an expiry ("12/25", "exp 12/2027") and a security code, in either order.
_TAIL_RE = re.compile(
    r"(?:[ \t,;:]{1,3}(?:(?:exp\w*|valid\s+thru)\W{0,2})?(?:\d{1,2} ?[/-] ?\d{2,4}|\d{3,4})(?![\d/])){1,2}",
    re.I,
)
# A run that could hold a card: a group of 4 digits, or 13 in one piece.
_CANDIDATE_RE = re.compile(r"(?<!\d)\d{4}(?!\d)|\d{13}")
_CODE_RE = re.compile(
    r"\b(?:cvv2?|cvc2?|csc|security\s+code|card\s+code)\b(?:\W{1,3}(?:is|was|code|number|no|num)\b)?\W{0,3}\d{3,4}\b",
    re.IGNORECASE,
)


def _luhn(digits: str) -> bool:
    total = 0
    for n, d in enumerate(reversed(digits)):
        value = int(d) * (2 if n % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def is_card(digits: str) -> bool:
    """Whether ``digits`` (ASCII digits only) are a payment card's number."""
    return (
        13 <= len(digits) <= 19
        and digits[0] in "23456"
        and (len(digits) != 15 or digits[:2] in ("34", "37"))
        and _luhn(digits)
    )


def _ascii(digits: str) -> str:
    return digits if digits.isascii() else "".join(str(unicodedata.digit(c)) for c in digits)


def _card_spans(run: re.Match[str]) -> list[tuple[int, int]]:
    """Where in one run of digit groups its card numbers are: a card keeps one kind of
    separator, so each stretch with one kind is looked at alone ("4111.1111.1111.1111 12/25":
    the dots', then the space's; "2024-02-09 - 2024-03-01": the dashes', the spaced dash's)."""
    text = run.group()
    if not _CANDIDATE_RE.search(text):
        return []
    groups = [(m.start(), m.end()) for m in _GROUP_RE.finditer(text)]
    kinds = [_kind(text[e:s]) for (_, e), (s, _) in zip(groups, groups[1:], strict=False)]
    spans, first = [], 0
    for k in range(1, len(kinds)):
        if kinds[k] != kinds[k - 1]:  # groups[k] ends one stretch and begins the next
            spans += _spans_in(text, groups[first : k + 1], run.start(), first > 0)
            first = k
    return spans + _spans_in(text, groups[first:], run.start(), first > 0)


def _spans_in(text: str, groups: list[tuple[int, int]], offset: int, shared: bool) -> list[tuple[int, int]]:
    """The card numbers among ``groups`` (one kind of separator between them; ``shared``: the
    first group ends the stretch before, as a phone number's last group before a card)."""
    lengths = [e - s for s, e in groups]
    if len(groups) > 5 and all(n == 4 for n in lengths[:-1]):
        return []  # one long number in 4-digit groups (a tracking number), no card
    spans = []
    base = int(shared)
    fours = base  # groups[base:fours] are all 4 digits
    for i, (start, _) in enumerate(groups):
        fours = fours + 1 if fours == i and lengths[i] == 4 else fours
        if lengths[i] != 4 and not 13 <= lengths[i] <= 19:
            continue  # every card's first group is 4 digits, or it is in one piece
        for shape in (((lengths[i],),) if lengths[i] != 4 else ()) + _SHAPES:
            j = i + len(shape)
            if tuple(lengths[i:j]) != shape or not is_card(_ascii("".join(text[s:e] for s, e in groups[i:j]))):
                continue
            # Inside a longer number all of whose groups are 4 digits: no card. A last group of
            # 3-4 digits right after one is its security code.
            if j < len(groups) and lengths[j] == 4 and j != len(groups) - 1 or base < i <= fours:
                continue
            end = groups[j][1] if j == len(groups) - 1 and 3 <= lengths[j] <= 4 else groups[j - 1][1]
            spans.append((offset + start, offset + end))
    return spans


def _kind(separator: str) -> str:
    """A separator as its kind: any space is " ", any dash "-"."""
    return re.sub(f"[{_DASHES}]", "-", re.sub(f"[{_SPACES}]", " ", separator))


def mask_cards(text: str) -> str:
    """``text`` with every payment card number (and an expiry or security code with it, or a
    code named as one) replaced by "[card number]" ("[security code]"); ``text`` itself,
    character for character, where it holds none."""
    if not _DIGIT_RE.search(text):
        return text
    # The text without invisible characters, and where each of its characters came from.
    if _INVISIBLE_RE.search(text):
        where: Any = [n for n, c in enumerate(text) if c not in _INVISIBLE]
        view = "".join(text[n] for n in where)
    else:
        where, view = range(len(text)), text
    ibans = [m.span() for m in _IBAN_RE.finditer(view)]
    spans: list[tuple[int, int, str]] = []
    for run in _RUN_RE.finditer(view):
        if run.end() - run.start() < 13 or any(s <= run.start() < e for s, e in ibans):
            continue
        for start, end in _card_spans(run):
            tail = _TAIL_RE.match(view, end)
            spans.append((start, tail.end() if tail else end, CARD_NUMBER))
    spans += [(m.start(), m.end(), SECURITY_CODE) for m in _CODE_RE.finditer(view)]
    if not spans:
        return text
    out, last = [], 0
    for start, end, label in _merged(spans):
        if start < last:
            continue
        keep = view[start:end] if label == SECURITY_CODE else ""
        replaced = re.sub(r"\d{3,4}\b(?!.*\d)", SECURITY_CODE, keep) if keep else label
        out += [text[last : where[start]], replaced]
        last = where[end - 1] + 1
    return "".join(out) + text[last:]


def _merged(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Overlapping card spans as one (a card found from two groupings), in text order."""
    merged: list[tuple[int, int, str]] = []
    for start, end, label in sorted(spans):
        if merged and start < merged[-1][1] and label == merged[-1][2] == CARD_NUMBER:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]), label)
        else:
            merged.append((start, end, label))
    return merged


def without_card_numbers(value: Any) -> Any:
    """``value`` (text, or a JSON document: every string in it, and every integer that is a
    card number) with its payment card numbers replaced by "[card number]"."""
    if isinstance(value, str):
        return mask_cards(value)
    if isinstance(value, dict):
        return {k: without_card_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_card_numbers(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and is_card(str(value)):
        return CARD_NUMBER
    return value


def safe_url(url: str) -> str:
    """``url`` fit for a log line or an error message: without its password (a Redis or
    PostgreSQL URL's) and its query (a webhook's ``?token=``), which are secrets."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a URL that does not parse)"
    user = f"{parts.username}:***@" if parts.password else f"{parts.username}@" if parts.username else ""
    netloc = f"{user}[{host}]{port}" if ":" in host else f"{user}{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def without_url(text: str, url: str) -> str:
    """``text`` (an exception's message, which may quote the URL it failed on) with ``url``
    shown as :func:`safe_url` shows it."""
    return text.replace(url, safe_url(url)) if url else text
