"""Guards against the classic near misses of a semantic cache: two questions that embed
close together but ask for different things.

- negation: "can I cancel" vs "can't I cancel", when negation is (nearly) all that differs:
  one-sided negation is common in paraphrases ("I still haven't got my card" / "when will
  my card arrive"), so it alone proves nothing;
- numbers: "order over 50" vs "order over 100", when both sides state standalone numbers
  ("COVID-19" and "COVID 19" are names, not quantities);
- opposite actions: cancel/place, add/remove, on/off, lock/unlock, ...;
- names: capitalised words (products, places, brands) that only one side mentions.

A guard that fires turns a semantic hit into a miss; it never makes a hit.
"""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"[^\W\d_](?:[^\W\d_]|')*|\d+(?:[.,]\d+)*")  # words (letters of any script), numbers
_STANDALONE_NUMBER_RE = re.compile(r"(?<![\w-])[$£€]?\d+(?:[.,]\d+)*(?![\w-])")
_NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "can't", "don't", "doesn't", "didn't", "isn't",
                        "aren't", "won't", "wasn't", "weren't", "haven't", "hasn't", "shouldn't", "couldn't", "nothing"})  # fmt: skip
_OPPOSITES = [
    ("cancel", "place"), ("cancel", "make"), ("cancel", "order"), ("add", "remove"), ("add", "delete"),
    ("on", "off"), ("enable", "disable"), ("activate", "deactivate"), ("open", "close"), ("lock", "unlock"),
    ("start", "stop"), ("increase", "decrease"), ("raise", "lower"), ("buy", "sell"), ("send", "receive"),
    ("deposit", "withdraw"), ("top", "withdraw"), ("subscribe", "unsubscribe"), ("join", "leave"),
    ("upgrade", "downgrade"), ("before", "after"), ("in", "out"), ("incoming", "outgoing"), ("accept", "decline"),
    ("approve", "reject"), ("pay", "refund"), ("charge", "refund"), ("credit", "debit"), ("import", "export"),
    ("login", "logout"), ("sign", "cancel"), ("create", "delete"), ("freeze", "unfreeze"), ("block", "unblock"),
]  # fmt: skip
_STEMS = {"cancelled": "cancel", "canceled": "cancel", "cancelling": "cancel", "canceling": "cancel", "placing": "place",
          "placed": "place", "added": "add", "adding": "add", "removed": "remove", "removing": "remove",
          "deleted": "delete", "deleting": "delete", "opened": "open", "closed": "close", "locked": "lock",
          "unlocked": "unlock", "sent": "send", "sending": "send", "received": "receive", "receiving": "receive",
          "bought": "buy", "sold": "sell", "deposited": "deposit", "withdrew": "withdraw", "withdrawn": "withdraw",
          "withdrawal": "withdraw", "paid": "pay", "charged": "charge", "refunded": "refund", "created": "create",
          "frozen": "freeze", "blocked": "block", "declined": "decline", "rejected": "reject", "approved": "approve"}  # fmt: skip
_SENTENCE_START_OK = frozenset({"i", "a", "the", "how", "what", "why", "when", "where", "which", "who", "can", "do",
                                "does", "is", "are", "my", "will", "should", "could", "would", "please", "hi", "hello"})  # fmt: skip


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _lower_set(text: str) -> set[str]:
    return {_STEMS.get(w.lower(), w.lower()) for w in _words(text)}


def _names(text: str) -> set[str]:
    words = _words(text)
    return {w.lower() for i, w in enumerate(words) if i > 0 and w[:1].isupper() and w.lower() not in _SENTENCE_START_OK}


def conflict(a: str, b: str) -> str | None:
    """Why ``a`` and ``b`` must not share an answer, or None if no guard fires."""
    wa, wb = _lower_set(a), _lower_set(b)
    if bool(wa & _NEGATIONS) != bool(wb & _NEGATIONS) and len((wa ^ wb) - _NEGATIONS) <= 1:
        return "negation"
    na = {n.lstrip("$£€").replace(",", "") for n in _STANDALONE_NUMBER_RE.findall(a)}
    nb = {n.lstrip("$£€").replace(",", "") for n in _STANDALONE_NUMBER_RE.findall(b)}
    if na and nb and na != nb:
        return "numbers"
    for x, y in _OPPOSITES:
        if (x in wa and x not in wb and y in wb and y not in wa) or (
            y in wa and y not in wb and x in wb and x not in wa
        ):
            return f"opposite: {x}/{y}"
    names_a, names_b = _names(a), _names(b)
    if names_a and names_b and names_a.isdisjoint(names_b):
        return "names"
    return None
