"""Evaluation data in the two shapes of shared/data/README.md: a corpus (files, or
corpus.jsonl) and qa.jsonl with {"id", "question", "answers", "gold_passage_ids"}."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class QAItem:
    id: str
    question: str
    answers: list[str]
    gold_passage_ids: list[str] = field(default_factory=list)
    history: list[dict[str, str]] = field(default_factory=list)


def load_qa(path: Path, limit: int | None = None, seed: int = 0) -> list[QAItem]:
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            items.append(
                QAItem(
                    str(r["id"]),
                    r["question"],
                    list(r.get("answers", [])),
                    list(r.get("gold_passage_ids", [])),
                    list(r.get("history") or []),
                )
            )
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)  # a fixed sample across the whole set
    return items


def resolve_dataset(data: Path) -> tuple[list[Path], Path]:
    """A folder with corpus.jsonl + qa.jsonl, as in shared/data."""
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


def contains_answer(prediction: str, answers: list[str]) -> bool:
    pred = f" {normalize_answer(prediction)} "
    return any(f" {normalize_answer(a)} " in pred for a in answers if normalize_answer(a))


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
