"""Payment card numbers out of a customer's text, before anything answers, logs or stores it.

A customer who pastes a card ("my card 4111 1111 1111 1111 exp 12/25 cvv 123 was charged
twice") must not have it kept in the answer log, the cache's keys, a job, a handoff or the
report (PCI DSS forbids keeping it), and no answer needs it. The one place that decides what a
card number is: the HTTP bodies (``serving.schemas.RequestBody``), the pipeline's question (the
CLI's ``rag ask`` and ``rag batch``) and the curated answers all go through it.

A card number is written as cards print it: 14 to 19 digits in one piece, or 4-4-4-4,
4-4-4-4-3, 4-6-5 (Amex) or 4-6-4 (Diners) groups split by one kind of separator (spaces, a
dash, a dot); digits of any script; invisible characters (a zero-width space, a soft hyphen, a
bidirectional mark) ignored. It starts 2-6, as the card schemes' numbers do, and passes the
Luhn check (15 digits only as an Amex, 34 or 37: a phone's IMEI has 15 digits and the same
check digit). Dates, phone numbers and prices are grouped otherwise; an IBAN, a number after a
"+", a longer run of 4-digit groups (a tracking number) and a number the customer names as
something else ("order no.", "invoice", "gift card code") are left alone. An expiry or a
security code right after a card goes with it, and a code named as one ("CVV 123", "cvv is
123") is replaced too. Only those characters change: the rest of the text is kept as written.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CARD_NUMBER = "[card number]"
SECURITY_CODE = "[security code]"

# Characters a paste from a web page or a PDF hides between digits, and the bidirectional
# marks and controls: ignored.
_INVISIBLE = frozenset(
    "\u00ad\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
)
# One separator between groups: spaces of any width (up to 3, a tab too), a dash, a dot, or " - ".
_SPACES = " \t\u00a0\u2000-\u200a\u202f\u205f\u3000"
_DASHES = "\\-\u2010-\u2015\u2212"
_RUN_RE = re.compile(rf"[0-9]+(?:(?:[{_SPACES}]{{0,2}}[{_DASHES}][{_SPACES}]{{0,2}}|[{_SPACES}]{{1,3}}|\.)[0-9]+)*")
_GROUP_RE = re.compile(r"[0-9]+")
# A character that is a digit to a reader: any script's ("٤"), full-width ("４"), circled ("④"),
# superscript ("²"); the view the search reads has it as its ASCII digit.
_ASCII_DIGIT_RE = re.compile(r"[0-9]")
# The groupings cards are printed in (one piece of 14-19 digits is checked apart: 13-digit
# cards are long gone, and an EAN-13 barcode has that length).
_SHAPES = ((4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4))
# An IBAN ("DE89 3704 0044 0532 0130 00", "de 89-3704-..."): its digits are no card.
_IBAN_RE = re.compile(
    r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b"  # as banks print it
    r"|(?i:iban)\W{0,3}[A-Za-z]{2} ?\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,3})?\b"  # named, any case
)
# After a card: an expiry ("12/25", "exp 12/2027") and a security code, in either order.
_TAIL_RE = re.compile(
    r"(?:[ \t,;:]{1,3}(?:(?:exp\w*|valid\s+thru)\W{0,2})?(?:\d{1,2} ?[/-] ?\d{2,4}|\d{3,4})(?![\d/])){1,2}",
    re.I,
)
_TAIL_GROUPS, _TAIL_DIGITS = 2, 4  # an expiry with no slash ("1225") and a code, as the run's last groups
# A number the customer says is something else, right before it: an order, an invoice, a
# tracking or a gift card number (shaped like a card, one in ten of them passes Luhn).
_NAMED_RE = re.compile(
    r"\b(?:order|invoice|tracking|parcel|shipment|consignment|reference|ref|gift\s*card|voucher|coupon|ticket|case"
    r"|receipt|booking|confirmation)\b(?:\W{0,3}(?:no|nr|num|number|id|code|is|was))*\W{0,3}$",
    re.IGNORECASE,
)
# A run that could hold a card: a group of 4 digits, or 14 in one piece.
_CANDIDATE_RE = re.compile(r"(?<![0-9])[0-9]{4}(?![0-9])|[0-9]{14}")
_CODE_RE = re.compile(
    r"\b(?:cvv2?|cvc2?|cv2|csc|security\s+code|card\s+verification(?:\s+(?:value|code))?)"
    r"(?:\W{1,3}(?:is|was|code|number|no|num|value)\b){0,2}\W{0,3}\d{3,4}\b",
    re.IGNORECASE,
)


def _as_digit(char: str) -> str:
    """A character that reads as a digit ("٤", "４", "④", "²") as its ASCII digit; any other as it is."""
    if char.isascii():
        return char
    value = unicodedata.digit(char, None)
    return str(value) if value is not None and len(str(value)) == 1 else char


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


def _card_spans(run: re.Match[str]) -> list[tuple[int, int, int]]:
    """Where in one run of digit groups its card numbers are: a card keeps one kind of
    separator, so each stretch with one kind is looked at alone ("4111.1111.1111.1111 12/25":
    the dots', then the space's; "2024-02-09 - 2024-03-01": the dashes', the spaced dash's)."""
    text = run.group()
    if not _CANDIDATE_RE.search(text):
        return []
    groups = [(m.start(), m.end()) for m in _GROUP_RE.finditer(text)]
    plus = run.string[run.start() - 1 : run.start()] == "+"
    kinds = [_kind(text[e:s]) for (_, e), (s, _) in zip(groups, groups[1:], strict=False)]
    spans, first = [], 0
    for k in range(1, len(kinds)):
        if kinds[k] != kinds[k - 1]:  # groups[k] ends one stretch and begins the next
            spans += _spans_in(text, groups[first : k + 1], run.start(), plus and first == 0)
            first = k
    return spans + _spans_in(text, groups[first:], run.start(), plus and first == 0)


def _spans_in(text: str, groups: list[tuple[int, int]], offset: int, phone: bool) -> list[tuple[int, int, int]]:
    """The card numbers among ``groups`` (one kind of separator between them; ``phone``: the
    first group follows a "+")."""
    lengths = [e - s for s, e in groups]
    if len(groups) > 5 and all(n == 4 for n in lengths[:-1]) and not (len(groups) == 6 and lengths[-1] == 3):
        # One long number in 4-digit groups (a tracking number), no card; but 4-4-4-4 4 3 is
        # a card, its expiry written without a slash ("1225") and its code.
        return []
    spans = []
    for i, (start, _) in enumerate(groups):
        if lengths[i] != 4 and not 14 <= lengths[i] <= 19:
            continue  # every card's first group is 4 digits, or it is in one piece
        if i == 0 and phone:
            continue  # "+4915123456789": a phone number
        for shape in (((lengths[i],),) if lengths[i] != 4 else ()) + _SHAPES:
            j = i + len(shape)
            if tuple(lengths[i:j]) != shape or not is_card("".join(text[s:e] for s, e in groups[i:j])):
                continue
            # What follows it in the run: nothing, or an expiry and a security code ("1225 123")
            # taken with it; more digits mean a longer number (a tracking number), not a card.
            rest = lengths[j:]
            if len(rest) > _TAIL_GROUPS or any(n > _TAIL_DIGITS for n in rest):
                continue
            spans.append((offset + start, offset + groups[j - 1][1], offset + groups[-1][1]))
    return spans


def _kind(separator: str) -> str:
    """A separator as its kind: any space is " ", any dash "-"."""
    return re.sub(f"[{_DASHES}]", "-", re.sub(f"[{_SPACES}]+", " ", separator))


def mask_cards(text: str) -> str:
    """``text`` with every payment card number (and an expiry or security code with it, or a
    code named as one) replaced by "[card number]" ("[security code]"); ``text`` itself,
    character for character, where it holds none."""
    # What the search reads: the text without invisible characters, every digit as its ASCII
    # one (one character for one), and where each of its characters came from.
    where: Any
    if text.isascii():
        if not _ASCII_DIGIT_RE.search(text):
            return text
        where, view = range(len(text)), text
    else:
        where = [n for n, c in enumerate(text) if c not in _INVISIBLE]
        view = "".join(_as_digit(text[n]) for n in where)
    ibans = [m.span() for m in _IBAN_RE.finditer(view)]
    spans: list[tuple[int, int, str]] = []
    for run in _RUN_RE.finditer(view):
        if run.end() - run.start() < 13 or any(s <= run.start() < e for s, e in ibans):
            continue
        for start, end, groups_end in _card_spans(run):  # the card, and the run's groups after it
            if _NAMED_RE.search(view, max(start - 40, 0), start):
                continue  # "order no. 4111 1111 1111 1111": said to be something else
            tail = _TAIL_RE.match(view, end)
            spans.append((start, max(tail.end() if tail else end, groups_end), CARD_NUMBER))
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
