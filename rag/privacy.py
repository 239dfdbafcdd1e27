"""Payment card numbers out of a customer's text, before anything answers, logs or stores it.

A customer who pastes a card ("my card 4111 1111 1111 1111 exp 12/25 cvv 123 was charged
twice") must not have it kept in the answer log, the cache's keys, a job, a handoff or the
report (PCI DSS forbids keeping it), and no answer needs it. The one place that decides what a
card number is: the HTTP bodies (``serving.schemas.RequestBody``), the pipeline's question (the
CLI's ``rag ask`` and ``rag batch``) and the curated answers all go through it.

A card number is written as cards print it: 14 to 19 digits in one piece, or 4-4-4-4,
4-4-4-4-3, 4-6-5 (Amex), 4-6-4 (Diners) or an Amex or Diners in fours, split by one kind of
separator (spaces or a tab, a dash, a dot, " - "); digits of any script; invisible characters
(a zero-width space, a soft hyphen, a bidirectional mark) ignored. It is in the card schemes'
ranges (2, 3 as their prefixes allow; 4-6) and passes the Luhn check (15 digits only as an
Amex, 34 or 37: a phone's IMEI has 15 digits and the same check digit). Dates, phone numbers
and prices are grouped otherwise; an IBAN (by its check digits), a number after a "+", 13
digits (a barcode), a longer run of 4-digit groups (a tracking number) and a number the
customer names as something else ("order 5953...", "order no.", "invoice", "gift card code")
are left alone. An expiry or a security code right after a card goes with it, and a code named
as one ("CVV 123", "cvv is 123") is replaced too. Only those characters change: the rest of the
text is kept as written.
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
# One separator between groups: spaces of any width (up to 3, a tab too), a dash, a dot, or " - "
# (the view the search reads has full-width forms as their ASCII ones: "－", "．").
_SPACES = " \t\u00a0\u2000-\u200a\u202f\u205f\u3000"
_DASHES = "\\-\u2010-\u2015\u2212\u30fc"
_RUN_RE = re.compile(rf"[0-9]+(?:(?:[{_SPACES}]{{0,2}}[{_DASHES}][{_SPACES}]{{0,2}}|[{_SPACES}]{{1,3}}|\.)[0-9]+)*")
_GROUP_RE = re.compile(r"[0-9]+")
_ASCII_DIGIT_RE = re.compile(r"[0-9]")
# The groupings cards are printed in (one piece of 14-19 digits is checked apart: 13-digit
# cards are long gone, and an EAN-13 barcode has that length); an Amex or a Diners typed in fours.
_SHAPES = ((4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 3), (4, 4, 4, 2))
_TAIL_GROUPS = 4  # an expiry ("1225", "12 25") and a code, and a small number, as the run's last groups (_tail)
# An IBAN ("DE89 3704 0044 0532 0130 00", "iban de89-3704-..."): its digits are no card, when
# its check digits say it is one.
_IBAN_RE = re.compile(
    r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b"  # as banks print it
    r"|(?<=\biban)\W{0,3}\b[A-Za-z]{2} ?\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,3})?\b",  # named
    re.IGNORECASE,
)
# After a card: an expiry ("12/25", "exp 12/2027") and a security code, in either order; not
# an amount ("300 EUR"), a date ("2024-03-01") or a decimal.
_TAIL_RE = re.compile(
    r"(?:[ \t,;:]{1,3}(?:(?:exp\w*|valid\s+thru)\W{0,2})?(?:\d{1,2} ?/ ?\d{2,4}|\d{3,4})"
    r"(?![\d/.,-]\d|\d|\s*(?:eur|usd|gbp|chf|sek|nok|dkk|pln|items?|pcs|pieces|x\b|[€$£%]))){1,2}",
    re.IGNORECASE,
)
# A number the customer says is something else, right before it: an order, invoice or tracking
# number ("order 5953...", "order no.", "invoice #"), or a gift card's (shaped like a card, one
# in ten of them passes Luhn). "The card I used for this order is 4111..." and "my order: 4111
# ..." are cards.
_NAMED_RE = re.compile(
    r"\b(?:(?:order|invoice|tracking|parcel|shipment|consignment|reference|ref|voucher|coupon|ticket|case|receipt"
    r"|booking|confirmation)(?:\W{0,2}(?:#|no\b\.?|nr\b\.?|num\b\.?|number|id\b|code)|(?=\s+$))"
    r"|(?:invoice|tracking|voucher|coupon|gift\s*card)(?:\W{0,2}(?:#|no\b\.?|number|code|id\b))?)\W{0,3}$",
    re.IGNORECASE,
)
# A run that could hold a card: a group of 4 digits, or 14 in one piece.
_CANDIDATE_RE = re.compile(r"(?<![0-9])[0-9]{4}(?![0-9])|[0-9]{14}")
_CODE_RE = re.compile(
    r"\b(?:cvv2?|cvc2?|cv2|csc|security\s+code|(?<!gift )card\s+code|card\s+verification(?:\s+(?:value|code))?)"
    r"(?:\W{1,3}(?:is|was|code|number|no|num|value)\b){0,2}\W{0,3}(\d{3,4})\b",
    re.IGNORECASE,
)


def _as_digit(char: str) -> str:
    """The character as the search reads it: one that reads as a digit ("٤", "４", "④", "²") as
    its ASCII digit, a full-width form as its ASCII one ("－"); any other as it is."""
    if char.isascii():
        return char
    value = unicodedata.digit(char, None)
    if value is not None:
        return str(value) if value < 10 else char
    plain = unicodedata.normalize("NFKC", char)
    return plain if len(plain) == 1 and plain.isascii() else char


def _luhn(digits: str) -> bool:
    total = 0
    for n, d in enumerate(reversed(digits)):
        value = int(d) * (2 if n % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def is_card(digits: str) -> bool:
    """Whether ``digits`` (ASCII digits only) are a payment card's number: 14-19 digits in the
    schemes' ranges (2: Mir 2200-2204, Mastercard 2221-2720; 3: Amex 34/37, JCB 35, Diners
    300-305/36/38/39; 4-6 as they come), Luhn-valid (15 digits only as an Amex)."""
    if not 14 <= len(digits) <= 19 or digits[0] not in "23456" or not _luhn(digits):
        return False
    if len(digits) == 15 and digits[:2] not in ("34", "37"):
        return False
    if digits[0] == "2":
        return 2200 <= int(digits[:4]) <= 2204 or 2221 <= int(digits[:4]) <= 2720
    if digits[0] == "3":
        return digits[:2] in ("34", "35", "36", "37", "38", "39") or 300 <= int(digits[:3]) <= 305
    return True


def _iban(text: str) -> bool:
    """Whether ``text`` is an IBAN: its check digits (mod 97) say so."""
    plain = re.sub(r"[^0-9A-Za-z]", "", text).upper()
    if len(plain) < 15 or not plain[:2].isalpha() or not plain[2:4].isdigit():
        return False
    moved = plain[4:] + plain[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _tail(parts: list[str], slash: bool = False, strict: bool = False) -> int | None:
    """How many of the digit groups right after a card go with it: its expiry ("1225", "12 25",
    "12 2026") and security code ("123", "1234") as people type them, in that order, and a last
    small number kept ("... 1111 1 item"); None when they are more of a longer number (a
    tracking number: not a card). ``slash``: the run goes on with "/", so its last group is an
    expiry's month ("12/25", which _TAIL_RE takes whole); ``strict``: no small number after
    (in a long run of 4-digit groups, that is a tracking number's end)."""
    n = 0
    if parts and len(parts[0]) == 4 and 1 <= int(parts[0][:2]) <= 12:
        n = 1  # "1225"
    elif len(parts) >= 2 and len(parts[0]) == 2 and len(parts[1]) in (2, 4) and 1 <= int(parts[0]) <= 12:
        n = 2  # "12 25", "12 2026"
    if n < len(parts) and len(parts[n]) in (3, 4):
        n += 1  # the code
    if n == len(parts) or (n == len(parts) - 1 and (slash or (n == 0 and not strict)) and len(parts[n]) <= 2):
        return len(parts) if slash else n
    return None


def _card_spans(run: re.Match[str]) -> list[tuple[int, int, int]]:
    """Where in one run of digit groups its card numbers are: (start, end of the card, end of
    the groups after it that go with it). A card keeps one kind of separator, so each stretch
    with one kind is looked at alone ("4111.1111.1111.1111 12/25": the dots', then the
    space's; "2024-02-09 - 2024-03-01": the dashes', the spaced dash's)."""
    text = run.group()
    if not _CANDIDATE_RE.search(text):
        return []
    groups = [(m.start(), m.end()) for m in _GROUP_RE.finditer(text)]
    plus = run.string[run.start() - 1 : run.start()] == "+"
    kinds = [_kind(text[e:s]) for (_, e), (s, _) in zip(groups, groups[1:], strict=False)]
    spans, first = [], 0
    for k in range(1, len(kinds)):
        if kinds[k] != kinds[k - 1]:  # groups[k] ends one stretch and begins the next
            spans += _spans_in(text, groups[first : k + 1], run.start(), plus and first == 0, False)
            first = k
    slash = run.string[run.end() : run.end() + 1] == "/"
    return spans + _spans_in(text, groups[first:], run.start(), plus and first == 0, slash)


def _spans_in(
    text: str, groups: list[tuple[int, int]], offset: int, phone: bool, slash: bool
) -> list[tuple[int, int, int]]:
    """The card numbers among ``groups`` (one kind of separator between them; ``phone``: the
    first group follows a "+"; ``slash``: the last is followed by "/")."""
    lengths = [e - s for s, e in groups]
    digits = ["".join(text[s:e]) for s, e in groups]
    if len(groups) > 5 and all(n == 4 for n in lengths[:-1]):
        return _uniform(groups, lengths, digits, offset, slash)
    spans = []
    for i, (start, _) in enumerate(groups):
        if lengths[i] != 4 and not 14 <= lengths[i] <= 19:
            continue  # every card's first group is 4 digits, or it is in one piece
        if i == 0 and phone and sum(lengths) <= 15:
            continue  # "+4915123456789": a phone number
        for shape in (((lengths[i],),) if lengths[i] != 4 else ()) + _SHAPES:
            j = i + len(shape)
            if len(groups) - j > _TAIL_GROUPS or tuple(lengths[i:j]) != shape or not is_card("".join(digits[i:j])):
                continue
            # What follows it in the run: nothing, or an expiry and a security code ("1225 123")
            # taken with it; other digits mean a longer number, not a card.
            if (taken := _tail(digits[j:], slash)) is None:
                continue
            spans.append((offset + start, offset + groups[j - 1][1], offset + groups[j - 1 + taken][1]))
            break
    return spans


def _uniform(
    groups: list[tuple[int, int]], lengths: list[int], digits: list[str], offset: int, slash: bool
) -> list[tuple[int, int, int]]:
    """A long run of 4-digit groups: the cards in it when it is cards back to back (one group
    before them allowed: a year, a PIN; an expiry and a code after them), else none (a
    tracking number)."""
    for lead in (0, 1):
        spans, i = [], lead
        while i + 4 <= len(groups) and all(n == 4 for n in lengths[i : i + 4]) and is_card("".join(digits[i : i + 4])):
            spans.append((offset + groups[i][0], offset + groups[i + 3][1], offset + groups[i + 3][1]))
            i += 4
        if spans and (taken := _tail(digits[i:], slash, strict=True)) is not None:
            start, end, _ = spans[-1]
            spans[-1] = (start, end, offset + groups[i - 1 + taken][1])
            return spans
    return []


def _kind(separator: str) -> str:
    """A separator as its kind: any space is " ", any dash "-"."""
    return re.sub(f"[{_DASHES}]", "-", re.sub(f"[{_SPACES}]+", " ", separator))


def mask_cards(text: str) -> str:
    """``text`` with every payment card number (and an expiry or security code with it, or a
    code named as one) replaced by "[card number]" ("[security code]"); ``text`` itself,
    character for character, where it holds none."""
    # What the search reads: the text without invisible characters, each digit (and full-width
    # form) as its ASCII one, one character for one, and where each of its characters came from.
    where: Any
    if text.isascii():
        if not _ASCII_DIGIT_RE.search(text):
            return text
        where, view = range(len(text)), text
    else:
        where = [n for n, c in enumerate(text) if c not in _INVISIBLE]
        view = "".join(_as_digit(text[n]) for n in where)
    ibans = [m.span() for m in _IBAN_RE.finditer(view) if _iban(m.group())]
    cards: list[tuple[int, int, int]] = []
    k = 0  # the first IBAN that may still hold a run (both in text order)
    for run in _RUN_RE.finditer(view):
        while k < len(ibans) and ibans[k][1] <= run.start():
            k += 1
        if run.end() - run.start() < 14 or (k < len(ibans) and ibans[k][0] <= run.start()):
            continue
        if view[run.start() - 1 : run.start()].isalpha() or view[run.end() : run.end() + 1].isalpha():
            continue  # glued to letters: an identifier (an answer_id's hex, "a3f41111..."), not a card
        for start, end, groups_end in _card_spans(run):  # the card, and the run's groups after it
            if _NAMED_RE.search(view, max(start - 40, 0), start):
                continue  # "order no. 4111 1111 1111 1111": said to be something else
            cards.append((start, end, groups_end))
    cards.sort()
    for n, (start, end, groups_end) in enumerate(cards):  # an expiry and a code go with it, not the next card
        tail = _TAIL_RE.match(view, end, cards[n + 1][0] if n + 1 < len(cards) else len(view))
        cards[n] = (start, max(tail.end() if tail else end, groups_end), 0)
    codes, k = [], 0
    for m in _CODE_RE.finditer(view):  # both in text order: k, the first card not ended before it
        while k < len(cards) and cards[k][1] <= m.start(1):
            k += 1
        if not (
            k < len(cards) and cards[k][0] < m.end(1)
        ):  # a "code" that is a card's start ("CVV 4111 ...") is the card
            codes.append(m.span(1))
    spans = sorted([(s, e, CARD_NUMBER) for s, e, _ in cards] + [(s, e, SECURITY_CODE) for s, e in codes])
    if not spans:
        return text
    out, last = [], 0
    for start, end, label in spans:
        if start < last:  # a card found from two groupings: the first covers it
            continue
        out += [text[last : where[start]], label]
        last = where[end - 1] + 1
    return "".join(out) + text[last:]


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


_CONTACT_RE = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # an e-mail address
    # a phone number the customer labels as theirs ("tel 07700 900123", "my number is +44 ...")
    r"|\b(?:tel|phone|mobile|cell|my number(?: is)?|call me(?: on| at)?)[.:]?\s*\+?[0-9][0-9 ()./-]{5,}[0-9]"
    rf"|{re.escape(CARD_NUMBER)}|{re.escape(SECURITY_CODE)}",
    re.IGNORECASE,
)


_LEFT_PUNCTUATION_RE = re.compile(r"[ \t]*[,;:](?=(?:[ \t]*[,;:])*[ \t]*[,;:.?!])|[ \t]+(?=[,;:.?!])")


def without_contact_details(text: str) -> str:
    """``text`` without the customer's e-mail address, a phone number they label as theirs and
    the card placeholders: what retrieval and the judge read (they say nothing about what is
    asked: the judge scored "Hi, this is Jane Roe, jane.roe@example.com, tel 07700 900123. My
    order HH-48213 has not arrived yet, how do I track it?" -7.4 against the tracking page, "I
    don't know"; -3.4 without them). The question is kept, stored and cached as written."""
    if not _CONTACT_RE.search(text):
        return text
    kept = re.sub(r"[ \t]{2,}", " ", _CONTACT_RE.sub(" ", text))  # lines stay lines (a quoted thread)
    kept = _LEFT_PUNCTUATION_RE.sub("", kept).lstrip(" ,;:-")  # "Roe, , . My order" -> "Roe. My order"
    return kept if kept.strip(" ,.;:-\n") else text
