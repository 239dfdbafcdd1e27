"""Payment card numbers out of a customer's text, before anything answers, logs or stores it.

A customer who pastes a card ("my card 4111 1111 1111 1111 exp 12/25 cvv 123 was charged
twice") must not have it kept in the answer log, the cache's keys, a job, a handoff or the
report (PCI DSS forbids keeping it), and no answer needs it. The one place that decides what a
card number is: the HTTP bodies (``serving.schemas.RequestBody``), the pipeline's question (the
CLI's ``rag ask`` and ``rag batch``) and the curated answers all go through it.

A card number is 13 to 19 digits in groups or not, starting as the card schemes' numbers do
(2-6), that pass the Luhn check (an order number seldom does both); 15 digits only as an Amex
(34, 37: a phone's IMEI has 15 digits and the same check digit). The digits may be of any
script (Arabic-Indic, full-width) and the groups split by spaces, dots, dashes or slashes; a
group run on into an expiry date or a security code ("... 1111 123", "... 1111 12/25") still
has its card found, and those short groups go with it. A security code named as one ("CVV
123") is replaced too.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CARD_NUMBER = "[card number]"
SECURITY_CODE = "[security code]"

# Runs of digit groups: a group is digits, the separators between groups at most 3 characters
# of spaces, dots, dashes and slashes ("4111 - 1111", "12/25").
_RUN_RE = re.compile(r"\d+(?:[\s./\-\u2010-\u2015]{1,3}\d+)*")
_GROUP_RE = re.compile(r"\d+")
_CODE_RE = re.compile(r"\b(cvv2?|cvc2?|csc|cid|security code)(\W{0,3})\d{3,4}\b", re.IGNORECASE)
_TAIL_GROUPS = 2  # an expiry ("12/25": two groups) or a security code after the number
_TAIL_DIGITS = 4


def _ascii_digits(text: str) -> str:
    """``text`` with every decimal digit of any script as its ASCII one, character for
    character (so positions still match): "٤١١١" is "4111"."""
    if text.isascii():
        return text
    return "".join(
        str(unicodedata.digit(c)) if not c.isascii() and unicodedata.category(c) == "Nd" else c for c in text
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


def _card_spans(run: str) -> list[tuple[int, int]]:
    """Where in one run of digit groups the card numbers are (with an expiry or a security
    code run on after one): windows of whole groups, the first that is a card from each
    group on, so "4111 1111 1111 1111 123" finds its 16 digits though all 19 fail Luhn."""
    groups = [(m.start(), m.end()) for m in _GROUP_RE.finditer(run)]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(groups):
        digits, found = "", None
        for j in range(i, len(groups)):
            digits += run[groups[j][0] : groups[j][1]]
            if len(digits) > 19:
                break
            if is_card(digits):
                found = j
        if found is None:
            i += 1
            continue
        end = found + 1
        tail = groups[end : end + _TAIL_GROUPS]
        if tail and end + len(tail) == len(groups) and all(e - s <= _TAIL_DIGITS for s, e in tail):
            end = len(groups)  # the run ends in an expiry or a security code: it goes too
        spans.append((groups[i][0], groups[end - 1][1]))
        i = end
    return spans


def mask_cards(text: str) -> str:
    """``text`` with every payment card number (and a security code named as one) replaced by
    "[card number]" ("[security code]"); ``text`` itself when it holds none."""
    plain = _ascii_digits(unicodedata.normalize("NFKC", text))
    spans = [
        (run.start() + start, run.start() + end)
        for run in _RUN_RE.finditer(plain)
        if run.end() - run.start() >= 13
        for start, end in _card_spans(run.group())
    ]
    if not spans and not _CODE_RE.search(plain):
        return text
    # Positions are the plain form's: the text itself where NFKC kept its length ("４" is one
    # character either way), else the plain form ("ﬁ" is two).
    base = text if len(plain) == len(text) else plain
    out, last = [], 0
    for start, end in spans:
        out += [base[last:start], CARD_NUMBER]
        last = end
    masked = "".join(out) + base[last:]
    return _CODE_RE.sub(lambda m: m.group(1) + m.group(2) + SECURITY_CODE, _ascii_digits(masked))


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
