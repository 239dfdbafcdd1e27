"""Evaluation data in the two shapes its commands take (README, "Measure"): a corpus (files, or
corpus.jsonl) and qa.jsonl with {"id", "question", "answers", "gold_passage_ids"}."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rag.wire import jsonl_lines


@dataclass
class QAItem:
    id: str
    question: str
    answers: list[str]
    gold_passage_ids: list[str] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)
    facts: list[list[str]] = field(default_factory=list)
    """Gold facts a right answer states, each as alternative phrasings (any one will do)."""
    forbidden: list[str] = field(default_factory=list)
    """Regular expressions for confident wrong claims: an answer matching one is wrong."""
    kind: str = ""


def load_qa(path: Path, limit: int | None = None, seed: int = 0) -> list[QAItem]:
    items = []
    for number, line in enumerate(jsonl_lines(path.read_text(encoding="utf-8")), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict) or not isinstance(r.get("question"), str) or "id" not in r:
                raise ValueError('need an object with "id" and "question"')
        except ValueError as exc:
            raise ValueError(f"{path} line {number}: {exc}") from None
        items.append(
            QAItem(
                str(r["id"]),
                r["question"],
                list(r.get("answers", [])),
                list(r.get("gold_passage_ids", [])),
                list(r.get("history") or []),
                [list(f) if isinstance(f, list) else [f] for f in r.get("facts") or []],
                list(r.get("forbidden") or []),
                str(r.get("kind") or ""),
            )
        )
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)  # a fixed sample across the whole set
    return items


def resolve_dataset(data: Path) -> tuple[list[Path], Path]:
    """A folder with corpus.jsonl + qa.jsonl."""
    corpus, qa = data / "corpus.jsonl", data / "qa.jsonl"
    if not corpus.exists() or not qa.exists():
        raise FileNotFoundError(f"{data} needs corpus.jsonl and qa.jsonl - or pass --corpus and --qa")
    return [corpus], qa


# SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces.
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = text.lower().replace("*", "")
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


_NOT_WORD = re.compile(r"[^\w]+")


def _words(text: str) -> str:
    """Words alone: punctuation (dashes, apostrophes, brackets) is a word break, not a join,
    so "5-cylinder" holds "5", "Tyndale's" holds "Tyndale" and "(1185–1226)" holds "1185"."""
    return " ".join(_ARTICLES.sub(" ", _NOT_WORD.sub(" ", text.lower().replace("_", " "))).split())


def contains_answer(prediction: str, answers: list[str]) -> bool:
    """Whether a gold answer's words appear, in order and whole, in the prediction (SQuAD's
    normalisation, but punctuation splits words rather than joining them)."""
    pred = f" {_words(prediction)} "
    return any(f" {_words(a)} " in pred for a in answers if _words(a))


def token_f1(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def within_gold(prediction: str, answers: list[str], min_tokens: int = 5) -> bool:
    """A prediction that restates a long gold answer (an FAQ entry's whole answer): at least
    80% of its words are the gold answer's. A quoted sentence of it always is."""
    pred = _tokens(prediction)
    if len(pred) < min_tokens:
        return False
    for answer in answers:
        gold = Counter(_tokens(answer))
        if len(gold) >= 3 * min_tokens and sum((Counter(pred) & gold).values()) >= 0.8 * len(pred):
            return True
    return False


def gold_id_warning(items: list[QAItem], document_ids: list[str], answered_only: bool = True) -> str | None:
    """What to tell a user whose questions' ``gold_passage_ids`` name no document of the corpus
    (their recall and citation recall count 0, which reads like a failed system), or None.
    ``answered_only``: only questions with answers are scored (citation recall), not all (retrieval)."""
    known = set(document_ids)
    scored = [i for i in items if i.gold_passage_ids and (i.answers or not answered_only)]
    astray = [i for i in scored if not known & set(i.gold_passage_ids)]
    if not astray:
        return None
    return (
        f"warning: {len(astray)} of {len(scored)} questions name no gold passage id that the corpus has "
        f"(theirs look like {astray[0].gold_passage_ids[0]!r}, the corpus's like {sorted(known)[:2]}): they score 0 - "
        "use the corpus's ids (a folder's documents are named by their path in it, a JSONL line by its id)"
    )
