"""Follow-up questions: which entity does "are their bathrooms clean?" mean?

A follow-up names no entity; the conversation does. The collection's chunk titles are its
entities (a hotel, a product, a help article), so the standalone form of a question is the
question plus the entity the conversation last named: looked for in the question itself,
then in the history from the newest turn back. Retrieval then keeps to that entity's
chunks, and the citations are about the one the user means.

Titles are matched as whole words, case-insensitively, by their full name or by their
distinctive words: "the Ashley" names "ASHLEY HOTEL", because "hotel" is in many titles and
"ashley" in one. No model, no tuning to a data set: the collection's own titles decide.

Measured on dstc11-hotels (1,436 follow-ups over 10,882 snippets of 33 hotels and 110
restaurants): an entity is found for 96% of questions and is the gold one for 91%.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from .compress import terms
from .privacy import without_contact_details
from .store import is_faq_question

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_GENERIC_TITLE_SHARE = 3  # a word in this many titles or more does not identify one
_MIN_ALIAS_CHARS = 3


def _words(text: str) -> list[str]:
    # "Hobson's" names "HOBSONS HOUSE": apostrophes join, they do not split.
    return [w.casefold() for w in _WORD_RE.findall(text.replace("'", "").replace("\u2019", ""))]


@dataclass(frozen=True)
class Standalone:
    question: str
    entity: str | None  # a chunk title the conversation names, if any


class EntityMatcher:
    """Finds which of a collection's titles a text names."""

    def __init__(self, titles: Sequence[str]) -> None:
        word_titles = Counter(w for title in titles for w in set(_words(title)))
        self._aliases: dict[tuple[str, ...], str] = {}
        ambiguous: set[tuple[str, ...]] = set()
        for title in titles:
            if is_faq_question(title):  # an FAQ question is a topic, not a name
                continue
            words = _words(title)
            distinctive = [w for w in words if word_titles[w] < _GENERIC_TITLE_SHARE]
            for alias in {tuple(words), tuple(distinctive)}:
                if not alias or len(" ".join(alias)) < _MIN_ALIAS_CHARS:
                    continue
                if self._aliases.get(alias, title) != title:
                    ambiguous.add(alias)  # two titles share it: it names neither
                self._aliases[alias] = title
        for alias in ambiguous:
            del self._aliases[alias]
        self._lengths = sorted({len(a) for a in self._aliases}, reverse=True)

    def find(self, text: str) -> str | None:
        """The title named last in ``text`` (the longest name where two end together)."""
        words = _words(text)
        best: tuple[int, int, str] | None = None  # (end, length, title)
        for n in self._lengths:
            for start in range(len(words) - n + 1):
                title = self._aliases.get(tuple(words[start : start + n]))
                if title is not None and (best is None or (start + n, n) > best[:2]):
                    best = (start + n, n, title)
        return best[2] if best else None


@lru_cache(maxsize=32)
def _matcher(titles: tuple[str, ...]) -> EntityMatcher:
    return EntityMatcher(titles)


def standalone(question: str, history: Sequence[dict[str, str]] | None, titles: Sequence[str]) -> Standalone:
    """The question with the entity the conversation means (None if it names none)."""
    matcher = _matcher(tuple(titles))
    for text in [question, *(turn.get("content", "") for turn in reversed(history or []))]:
        entity = matcher.find(text)
        if entity is not None:
            return Standalone(question, entity)
    return Standalone(question, None)


def only_an_opening(question: str, history: Sequence[dict[str, str]] | None, titles: Sequence[str]) -> bool:
    """Whether ``history`` is only the conversation's opening, nothing the question can lean on:
    no user turn but courtesy ("hi"), no entity named (a bot's "Hi! How can I help?"), and a
    question that does not point back. Such a question is a first question, searched, answered
    and cached as one (a bot that opens with a greeting got no cached answer)."""
    if not history or refers_back(question):
        return False
    if any(t.get("role") == "user" and small_talk(t.get("content", "")) is None for t in history):
        return False
    return standalone("", history, titles).entity is None


# Words that point back at the conversation ("does it have parking?", "their rooms", "that
# one", "anything else?", "tell me more"), or a question that continues one ("and for
# express?", "what about Ireland?", "even for sale items?"). Whole words only: "one-time",
# "same-day" point at nothing; nor do "is there" and "is it possible".
_CONTINUATION = r"^\W*(?:and|or|but|even|what about|how about)\b"
_BACK_REFERENCE_RE = re.compile(
    r"(?<![\w-])(?:it|its|they|them|their|theirs|that|this|these|those|there|same|he|she|his|her|him"
    r"|more|else|other|others|another|either|instead)(?![\w-])"
    rf"|{_CONTINUATION}",
    re.IGNORECASE,
)
_EMPTY_REFERENCE_RE = re.compile(
    r"\b(?:is|are|was|were|will|would)\s+there\b|\bthere\s+(?:is|are|was|were|will)\b"
    r"|\b(?:is|was|will)\s+it\s+possible\b|\b(?:one more|another|other)\s+(?:question|thing)\b",
    re.IGNORECASE,
)
# The question a message asks is its last sentence with a question mark ("Thanks, that worked!
# How do I change my email?"): what comes before it (thanks, "got it") points at nothing.
_SENTENCE_RE = re.compile(r"[^.!?]+[.!?]*")
_OWN_WORDS = 2  # fewer content words than this ("how much?") cannot be searched alone


# Explicit switches only: "another thing: is breakfast included?" goes on about the same hotel.
_NEW_TOPIC_RE = re.compile(
    r"\b(?:different|separate|unrelated)\s+(?:question|topic|subject|matter)\b|\bnew\s+topic\b"
    r"|\bunrelated\b|\bchang(?:e|ing)\s+(?:the\s+)?(?:subject|topic)\b|\bon\s+(?:an)?other\s+note\b",
    re.IGNORECASE,
)


_CONTINUES_RE = re.compile(_CONTINUATION, re.IGNORECASE)


def continues(question: str) -> bool:
    """Whether ``question`` goes on with the turn before about a subject of its own ("What
    about Hearth Points?", "and for express?", "even for sale items?"): what it asks is in
    the turn before, what it asks it of is in its own words; not "but is it free?", whose
    subject is the turn before's."""
    if not _CONTINUES_RE.search(question):
        return False
    rest = _CONTINUES_RE.sub(" ", question)  # "is it free?": the subject is the turn before's
    return bool(terms(rest)) and not _BACK_REFERENCE_RE.search(rest)


def new_topic(question: str) -> bool:
    """Whether the message says it starts another topic ("Different question: ...", "on
    another note", "unrelated, but ..."): then nothing of the conversation is carried into
    it, not even the entity it named."""
    return bool(_NEW_TOPIC_RE.search(question))


def refers_back(question: str) -> bool:
    """Whether ``question`` leans on the turn before it; otherwise it starts a topic of its own
    ("Thanks. Separate question: can I pay with PayPal?" after a password reset) and is
    searched and judged alone, not with the turn before (which found the old topic's answer).
    A definite "the hotel" is not read as pointing back (support questions say "the order" of
    every topic): dstc11-hotels without the entity filter, 0.163 -> 0.157 nDCG@10; with it (the
    default, the entity carried over) unchanged at 0.661."""
    sentences = [s.strip() for s in _SENTENCE_RE.findall(question) if s.strip()]
    asked = next((s for s in reversed(sentences) if s.endswith("?")), sentences[-1] if sentences else question)
    if len(terms(asked)) < _OWN_WORDS:
        return True
    return bool(_BACK_REFERENCE_RE.search(_NEW_TOPIC_RE.sub(" ", _EMPTY_REFERENCE_RE.sub(" ", asked))))


# Invisible format characters: a zero-width space, a word joiner, a byte-order mark, a soft
# hyphen, and the bidirectional controls (which also turn text around on an admin's terminal).
# Not the zero-width (non-)joiners: Persian and Indic scripts spell with them.
_INVISIBLE_RE = re.compile("[\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]")


def plain_text(text: str) -> str:
    """A customer's text as the models read it: full-width forms as their plain ones ("Ｃａｎ"
    is "Can", "４" is "4": NFKC, as the cache keys it), without invisible format characters."""
    return _INVISIBLE_RE.sub("", unicodedata.normalize("NFKC", text))


# A long message (a complaint with its question at the end, a pasted email thread) is searched,
# judged and keyed in the cache by what it asks, not by its first 256 tokens (all the embedder
# reads): two complaints with the same story and different questions are different questions.
# Longer than any question of the benchmarks (29 words); a question with its context fits.
LONG_MESSAGE_WORDS = 60
# Where the message ends and the thread it replies to, or a signature, begins.
_THREAD_RE = re.compile(
    r"^\s*(?:-{2,}\s*(?:original|forwarded)\s+message\s*-{2,}|-{2,}\s*$|_{5,}\s*$|on\b.{3,120}\bwrote:\s*$"
    r"|from:\s.+|sent from my\b.*|get outlook for\b.*)",
    re.IGNORECASE,
)
_QUESTION_MARKS = "?？؟❓❔¿"
_ASKING_RE = re.compile(
    r"^\W*(?:(?:and|also|so|but|ok|okay|then)\W+)*(?:how|what|whats|what's|when|where|why|who|which|can|could|do|does|did"
    r"|is|are|was|were|will|would|should|shall|may|might|have|has|am)\b",
    re.IGNORECASE,
)
# A sentence ends at its punctuation followed by a space, or at a line break ("$12.50", "v2.1"
# and "e.g." stay whole).
_SENTENCE_BREAK_RE = re.compile(r"(?<=[.!?？؟❓❔])\s+|\n+")


def _asks(sentence: str) -> bool:
    return any(m in sentence for m in _QUESTION_MARKS) or bool(_ASKING_RE.match(sentence))


def focus(message: str) -> str:
    """What a long message asks: its sentences that ask something (a question mark, or "how",
    "can I", ...), latest last, up to :data:`LONG_MESSAGE_WORDS` words; without one, its last
    sentences. The thread it replies to (quoted lines, "-----Original Message-----", "On ...
    wrote:") and a signature are left out. A message of up to that many words is itself. Either
    way without the customer's contact details (:func:`without_contact_details`)."""
    message = without_contact_details(message)
    if len(message.split()) <= LONG_MESSAGE_WORDS:
        return message
    lines: list[str] = []
    for line in message.splitlines():
        if _THREAD_RE.match(line):
            break
        if not line.lstrip().startswith(">"):
            lines.append(line)
    sentences = [s.strip() for s in _SENTENCE_BREAK_RE.split("\n".join(lines)) if s and s.strip()]
    if not sentences:
        return message
    asking = [n for n, s in enumerate(sentences) if _asks(s)] or [len(sentences) - 1]
    kept: list[int] = []
    words = 0
    for n in reversed(asking):
        words += len(sentences[n].split())
        if kept and words > LONG_MESSAGE_WORDS:
            break
        kept.insert(0, n)
    # A question that points back ("How do I cancel it?") keeps the sentence before it, which
    # says what "it" is.
    first = kept[0]
    if first > 0 and first - 1 not in kept and _BACK_REFERENCE_RE.search(sentences[first]):
        if words + len(sentences[first - 1].split()) <= LONG_MESSAGE_WORDS:
            kept.insert(0, first - 1)
    focused = " ".join(sentences[n] for n in kept).split()
    return " ".join(focused[-LONG_MESSAGE_WORDS:])  # one run-on sentence: its end, where a question is


# A message that asks nothing ("hi", "thanks, that worked!", a thumbs-up emoji, "bye") gets a
# courteous reply of its own: not the last answer again (pasted with the turn before), not "I
# don't know" handed to the help desk as an unanswered question.
# Courtesy words in the languages customers most often write (the reply is English, as every
# answer is: README, Languages); a word of another script is one run of letters ("谢谢").
_GREETING = frozenset(
    "hi hello hey hiya heya howdy morning afternoon evening yo bonjour salut bonsoir hola buenos buenas hallo "
    "guten moin servus ciao buongiorno olá ola oi bom привет здравствуйте cześć dzień hej hei hallå merhaba "
    "你好 您好 こんにちは 안녕하세요 مرحبا السلام नमस्ते namaste".split()
)
_THANKS = frozenset(
    "thanks thank thx ty cheers ok okay k kk great cool perfect awesome nice brilliant lovely "
    "fantastic excellent super amazing sorted fine noted understood worked works helped helpful "
    "merci gracias danke dank grazie obrigado obrigada dziękuję dzięki спасибо tack takk kiitos teşekkürler "
    "teşekkür 谢谢 多谢 謝謝 ありがとう ありがとうございます 감사합니다 고맙습니다 شكرا धन्यवाद".split()
)
_BYE = frozenset("bye goodbye cya later adiós adios revoir tschüss tschüs arrivederci пока 再见".split())
_FILLER = frozenset(
    "you u so very much many a lot lots that it this has have that's it's was is all good got "
    "the for your help again oh ah alright right yes yeah yep there see ya now i i'm "
    "am and just really thats its beaucoup muchas mil mille vielen schön sehr tante bardzo большое "
    "dobry días dias tardes noches tag dia tarde giorno au".split()
)
_COURTESY_WORD_RE = re.compile(r"[\w']+")  # every script and digits: "hi, мой заказ не пришел" asks something


def _plain(text: str) -> str:
    """Lower case without combining marks ("شكرًا" is "شكرا", "नमस्ते" one run of letters)."""
    return "".join(c for c in unicodedata.normalize("NFC", text.lower()) if unicodedata.category(c) not in ("Mn", "Mc"))


_GREETING, _THANKS, _BYE, _FILLER = (frozenset(map(_plain, words)) for words in (_GREETING, _THANKS, _BYE, _FILLER))
_COURTESY = _GREETING | _THANKS | _BYE | _FILLER
# An emoji alone is thanks only when it is a friendly one: "😡", "👎" or "📦" is a customer who
# wants something, who gets the answer path (and a person, if nothing answers).
_FRIENDLY = frozenset("👍👌🙏😊🙂😀😃😄😁☺😍🤩🥰😘❤♥💙💚💛🧡💜🖤🤍💯✅✔🎉🥳👏🙌✨😎🤗😉👋🆗🌟⭐")
# Beside courtesy words, these make it sarcasm or a complaint ("thanks 😅" and "thanks =)" stay thanks).
_UNFRIENDLY = frozenset("👎😡😠🤬💩🙄😤😒🖕☹🙁😣😖😫😩😑😐🤦")
# Skin tones, the emoji and text presentation selectors, a zero-width joiner: parts of one emoji.
_EMOJI_PARTS_RE = re.compile("[\U0001f3fb-\U0001f3ff\ufe0e\ufe0f\u200d]")
SMALL_TALK = "small_talk"  # the answer kind of such a reply
SMALL_TALK_REPLIES = {
    "greeting": "Hi! What would you like to know? Ask me a question about our products, orders or services.",
    "thanks": "You're welcome. Is there anything else I can help you with?",
    "bye": "Goodbye, and thanks for getting in touch.",
}


def small_talk(message: str) -> str | None:
    """``greeting``, ``thanks`` or ``bye`` for a message that asks nothing (only courtesy words,
    or no words at all: "👍"), else None. A question mark means a question, whatever its words."""
    if any(m in message for m in _QUESTION_MARKS):
        return None
    words = _COURTESY_WORD_RE.findall(_plain(message))
    if any(w not in _COURTESY for w in words):
        return None
    symbols = [
        c
        for c in _EMOJI_PARTS_RE.sub("", _COURTESY_WORD_RE.sub("", _plain(message)))
        if not c.isspace() and unicodedata.category(c)[0] != "P"
    ]
    if not words:  # a friendly emoji alone is thanks; an angry one, an order number or "!!!" is not
        return "thanks" if symbols and all(c in _FRIENDLY for c in symbols) else None
    if any(c in _UNFRIENDLY for c in symbols):  # "great 👎", "ok 😡": a customer who wants something
        return None
    if any(w in _BYE for w in words):
        return "bye"
    if any(w in _THANKS for w in words):
        return "thanks"
    return "greeting" if any(w in _GREETING for w in words) else None
