"""The soak test's load: the kinds of request, the seed questions and their rewordings, the
templates of never-seen questions, the malformed requests, and what counts as each one's
right answer (:func:`judge`). ``eval/soak.py`` drives it."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

KINDS = ("seed", "exact", "semantic", "miss", "bad")
DEFAULT_MIX = {"exact": 0.35, "semantic": 0.25, "miss": 0.25, "bad": 0.15}
MAX_GROWTH = 0.05
ERROR_KEYS = {"message", "type", "param", "code"}

# Seed questions the example help centre answers, each with rewordings that embed within
# the cache's threshold of it (cosine >= 0.89 with all-MiniLM-L6-v2).
SEEDS: dict[str, list[str]] = {
    "How long do refunds take?": ["How long does a refund take?", "how long do refunds usually take"],
    "How do I reset my password?": ["How can I reset my password?", "I forgot my password, how do I reset it?"],
    "How can I track my parcel?": ["How do I track my parcel?", "Where can I track my parcel?"],
    "What payment methods do you accept?": ["Which payment methods do you accept?", "What payment methods are accepted?"],
    "How do I cancel an order?": ["How can I cancel an order?", "how do i cancel my order"],
    "Do you ship internationally?": ["Do you ship abroad?", "Do you deliver internationally?"],
    "How do gift cards work?": ["How does a gift card work?", "how do your gift cards work"],
    "How do I contact customer support?": ["How can I contact customer support?", "How do I get in touch with customer support?"],
    "What does the warranty cover?": ["What is covered by the warranty?", "what does your warranty cover"],
    "What should I do if my item arrived damaged?": ["What do I do if my item arrived damaged?", "My item arrived damaged, what should I do?"],
}  # fmt: skip
# Politeness around a rewording: new text for the exact cache, the same question for the semantic one.
WRAPPERS = ("{q}", "Hi, {lower_first}", "{bare}, please?", "Hello! {q} Thanks.", "Quick question: {lower}")

ITEMS = ("sofa", "lamp", "mattress", "rug", "kettle", "armchair", "duvet", "bookcase", "mirror", "desk", "wardrobe", "vase")  # fmt: skip
COUNTRIES = ("Norway", "Switzerland", "France", "Germany", "Spain", "Italy", "Ireland", "Poland", "Portugal", "Austria")
METHODS = ("PayPal", "Klarna", "Apple Pay", "Google Pay", "a Visa card", "American Express", "a gift card")
# Every template states a standalone number, which the cache's guards never let two
# different questions share: a new number is a new question.
TEMPLATES = (
    "Can I return a {item} I bought {n} days ago?",
    "How much is delivery of a {item} to {country} for an order of £{n}?",
    "My parcel with the {item} has not arrived after {n} days, what should I do?",
    "Can I pay for an order of £{n} with {method}?",
    "How many Hearth Points do I get for spending £{n} on a {item}?",
    "Can I still cancel order number {n} for a {item}?",
    "Does the warranty cover a {item} that broke after {n} months?",
    "Can I use a gift card worth £{n} to buy a {item}?",
    "Is there a discount on {n} {item}s delivered to {country}?",
)


@dataclass(frozen=True)
class Call:
    """One request to send and what counts as its correct answer."""

    kind: str
    label: str
    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)  # httpx keyword arguments: json, content, headers
    expect: int = 200
    question: str | None = None


@dataclass
class Outcome:
    t: float  # seconds since the start of the run, when the request was sent
    kind: str
    label: str
    status: int | None
    latency_ms: float
    error: str | None
    cache: str | None = None


@dataclass
class SoakConfig:
    url: str
    pid: int | None = None
    duration_s: float = 300.0
    max_requests: int = 100_000
    concurrency: int = 8
    warmup_s: float | None = None
    timeout_s: float = 30.0
    sample_s: float = 1.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed: int | None = None
    api_key: str | None = None
    collection: str | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    allow_remote: bool = False


class LoadMix:
    """Draws the next request; remembers answered questions for exact hits."""

    def __init__(self, rng: random.Random, mix: dict[str, float], collection: str | None) -> None:
        unknown = set(mix) - set(DEFAULT_MIX)
        if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"--mix takes weights for {', '.join(DEFAULT_MIX)}, e.g. exact=0.35,semantic=0.25,...")
        self.rng = rng
        self.kinds = list(mix)
        self.weights = [mix[k] for k in self.kinds]
        self.collection = collection
        self.answered: list[str] = []  # questions the cache holds (answered with citations)
        self._numbers = itertools.count(rng.randrange(10, 1_000_000, 7))
        self._bad = itertools.cycle(range(len(self._bad_calls("x"))))

    def _query(self, question: str) -> dict[str, Any]:
        body: dict[str, Any] = {"question": question}
        if self.collection is not None:
            body["collection"] = self.collection
        return {"json": body}

    def seeds(self) -> list[Call]:
        return [Call("seed", "seed", "POST", "/v1/query", self._query(q), question=q) for q in SEEDS]

    def remember(self, question: str) -> None:
        if len(self.answered) < 1000:
            self.answered.append(question)
        else:  # a bounded pool: replace one at random
            self.answered[self.rng.randrange(len(self.answered))] = question

    def next(self) -> Call:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "exact" and self.answered:
            question = self.rng.choice(self.answered)
            variant = self.rng.choice(
                (question, question.lower(), f"  {question.upper()}  ", question.rstrip("?.!") + " ?!")
            )
            return Call("exact", "exact", "POST", "/v1/query", self._query(variant), question=question)
        if kind == "semantic" or kind == "exact":  # nothing answered yet: reword a seed instead
            q = self.rng.choice(self.rng.choice(list(SEEDS.values())))
            bare = q.rstrip("?.! ")
            text = self.rng.choice(WRAPPERS).format(q=q, bare=bare, lower=q.lower(), lower_first=q[:1].lower() + q[1:])
            return Call("semantic", "semantic", "POST", "/v1/query", self._query(text), question=text)
        if kind == "miss":
            template = self.rng.choice(TEMPLATES)
            text = template.format(
                n=next(self._numbers),
                item=self.rng.choice(ITEMS),
                country=self.rng.choice(COUNTRIES),
                method=self.rng.choice(METHODS),
            )
            return Call("miss", "miss", "POST", "/v1/query", self._query(text), question=text)
        calls = self._bad_calls(self.rng.choice(list(SEEDS)))
        return calls[next(self._bad)]

    def _bad_calls(self, q: str) -> list[Call]:
        """Malformed requests, each with the 4xx it must get."""
        json_type = {"content-type": "application/json"}

        def query(label: str, expect: int, **body: Any) -> Call:
            return Call("bad", label, "POST", "/v1/query", {"json": body}, expect)

        return [
            query("empty question", 400, question=""),
            query("blank question", 400, question="   \n "),
            query("question not a string", 400, question=42),
            query("question missing", 400, top_k=3),
            query("question too long", 400, question="refund " * 5000),
            query("top_k 0", 400, question=q, top_k=0),
            query("top_k 51", 400, question=q, top_k=51),
            query("top_k not a number", 400, question=q, top_k="many"),
            query("unknown collection", 404, question=q, collection="no-such-collection"),
            query("bad collection name", 400, question=q, collection="../etc"),
            query("unknown field", 400, question=q, colour="blue"),
            query("history not a list", 400, question=q, history="earlier"),
            Call(
                "bad",
                "bad JSON",
                "POST",
                "/v1/query",
                {"content": b'{"question": "How long', "headers": json_type},
                400,
            ),
            Call("bad", "body not an object", "POST", "/v1/query", {"json": ["question"]}, 400),
            Call("bad", "wrong method", "GET", "/v1/query", {}, 405),
            Call("bad", "unknown route", "GET", "/v1/no-such-route", {}, 404),
        ]


def judge(call: Call, response: httpx.Response) -> tuple[str | None, str | None]:
    """(error, cache outcome): error is None when the response is the right one."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if call.kind == "bad":
        error = body.get("error") if isinstance(body, dict) else None
        if status != call.expect:
            return f"{call.label}: got {status}, expected {call.expect}: {response.text[:200]}", None
        if not (isinstance(error, dict) and set(error) == ERROR_KEYS and error.get("message")):
            return f"{call.label}: {status} without the error body: {response.text[:200]}", None
        return None, None
    if status != 200:
        return f"{call.kind}: got {status}: {response.text[:200]}", None
    if not (isinstance(body, dict) and isinstance(body.get("answer"), str) and isinstance(body.get("cache"), dict)):
        return f"{call.kind}: 200 without an answer: {response.text[:200]}", None
    return None, body["cache"].get("kind") or "miss"
