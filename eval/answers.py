"""`rag eval answers`: is each answer right, an honest "I don't know", or wrong?

Ingests the corpus into a scratch data dir, asks every question with the cache off, and
judges each answer without an LLM judge:

- a question with ``facts`` (the help-centre set, ``eval/sets/``) is **right** when the answer
  states every gold fact (any of its phrasings) and no ``forbidden`` claim (regular
  expressions for the confident wrong answers: "yes, we deliver to Canada");
- a question with only ``answers`` (XQuAD, the covid FAQ: the shared/data shape) is right when
  the answer contains a gold answer (SQuAD-normalised), or restates a long one (80% of its
  words are the gold answer's: a quoted sentence of the FAQ entry);
- an answerable question answered "I don't know" is **abstained** (a false abstention);
- an unanswerable question (``"answers": []``) is right only when the answer is "I don't
  know";
- everything else is **wrong**: a forbidden claim, or an answer without the gold facts.

For an LLM backend the model's own answer is judged too, before the guard, so the report
says what the guard caught (model wrong, served not wrong) and what it replaced needlessly
(model right, served something else).
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rag.errors import InvalidRequestError, RagError
from rag.prompts import NO_ANSWER
from rag.settings import Settings

from .data import QAItem, contains_answer, gold_id_warning, token_f1, within_gold
from .stats import percentile, rate

VERDICTS = ("right", "abstained", "wrong")


def _plain(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def judge(item: QAItem, answer: str) -> tuple[str, str]:
    """(right | abstained | wrong, why) for one answer to one question."""
    if answer.strip() == NO_ANSWER:
        return "abstained", "" if not item.answers else "abstained on an answerable question"
    if not item.answers:
        return "wrong", "answered a question the documents do not answer"
    for pattern in item.forbidden:
        if re.search(pattern, answer, flags=re.IGNORECASE):
            return "wrong", f"forbidden claim /{pattern}/"
    if item.facts:
        plain = _plain(answer)
        missing = [alts for alts in item.facts if not any(_plain(a) in plain for a in alts)]
        if missing:
            return "wrong", "missing: " + "; ".join(" | ".join(alts) for alts in missing)
        return "right", ""
    if contains_answer(answer, item.answers) or within_gold(answer, item.answers):
        return "right", ""
    return "wrong", "no gold answer in it"


async def _ask_all(
    pipeline: Any, items: list[QAItem], progress: bool | None, label: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the judged rows, the questions the service failed on with their error): a backend
    that fails one question (a timeout, a 503) costs that question, not the run."""
    rows, errors = [], []
    for item in tqdm(items, desc=f"answering ({label})", unit="q", disable=None if progress is None else not progress):
        started = time.perf_counter()
        try:
            answer = await pipeline.answer(item.question, "eval", history=item.history or None)
        except RagError as exc:
            errors.append({"id": item.id, "question": item.question, "error": exc.message})
            continue
        elapsed = (time.perf_counter() - started) * 1000
        cited = [c.document_id for c in answer.citations]
        verdict, why = judge(item, answer.answer)
        row: dict[str, Any] = {
            "id": item.id,
            "kind": item.kind,
            "question": item.question,
            "gold": item.answers,
            "answer": answer.answer,
            "answer_kind": answer.answer_kind,
            "verdict": verdict,
            "why": why,
            "answerable": bool(item.answers),
            "f1": token_f1(answer.answer, item.answers) if item.answers else float(answer.answer == NO_ANSWER),
            "citation_recall": len(set(cited) & set(item.gold_passage_ids)) / len(set(item.gold_passage_ids))
            if item.gold_passage_ids and item.answers
            else None,
            "latency_ms": elapsed,
            "generate_ms": answer.timings_ms.get("generate", 0.0),
            "completion_tokens": answer.usage.get("completion_tokens") or 0,
        }
        if answer.model_answer is not None:  # an LLM answered: judge it before the guard too
            row["model_answer"] = answer.model_answer
            row["model_verdict"] = judge(item, answer.model_answer or NO_ANSWER)[0]
            row["guard"] = answer.guard_reason
        rows.append(row)
    return rows, errors


def _rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    for verdict in VERDICTS:
        count = sum(r["verdict"] == verdict for r in rows)
        out[verdict] = count
        out[f"{verdict}_rate"] = rate(count, n)
    return out


def summarise(rows: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    with_gold = [r["citation_recall"] for r in answerable if r["citation_recall"] is not None]
    latencies = [r["latency_ms"] for r in rows]
    gen_ms = sum(r["generate_ms"] for r in rows)
    tokens = sum(r["completion_tokens"] for r in rows)
    summary: dict[str, Any] = {
        "backend": backend,
        "questions": len(rows),
        "all": _rates(rows),
        "answerable": _rates(answerable),
        "unanswerable": _rates(unanswerable),
        "contains": sum(r["verdict"] == "right" for r in answerable) / len(answerable) if answerable else None,
        "f1": sum(r["f1"] for r in answerable) / len(answerable) if answerable else None,
        "citation_recall": sum(with_gold) / len(with_gold) if with_gold else None,
        "abstain_rate": sum(r["verdict"] == "abstained" for r in unanswerable) / len(unanswerable)
        if unanswerable
        else None,
        "false_abstain_rate": sum(r["verdict"] == "abstained" for r in answerable) / len(answerable)
        if answerable
        else None,
        "quoted": sum(r["answer_kind"] == "quoted" for r in rows),
        # Beside "contains": a long quote contains more gold answers (token F1 says how much else it says).
        "answer_words_p50": percentile([len(r["answer"].split()) for r in rows if r["verdict"] != "abstained"], 50)
        if any(r["verdict"] != "abstained" for r in rows)
        else None,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "decode_tok_per_s": tokens / (gen_ms / 1000) if gen_ms else 0.0,
        "by_kind": {
            kind: _rates([r for r in rows if r["kind"] == kind])
            for kind in sorted({r["kind"] for r in rows if r["kind"]})
        },
    }
    judged = [r for r in rows if "model_verdict" in r]
    if judged:
        touched = [r for r in judged if r["guard"] is not None]
        summary["guard"] = {
            "model_right": sum(r["model_verdict"] == "right" for r in judged),
            "model_wrong": sum(r["model_verdict"] == "wrong" for r in judged),
            "model_abstained": sum(r["model_verdict"] == "abstained" for r in judged),
            "acted": len(touched),
            # The model was wrong, and what was served is not.
            "caught": sum(r["model_verdict"] == "wrong" and r["verdict"] != "wrong" for r in touched),
            # The model was wrong, and so is what was served (cut short, or a quote that misses).
            "missed": sum(r["model_verdict"] == "wrong" and r["verdict"] == "wrong" for r in judged),
            # The model was right and the guard still acted: needless, if harmless when the quote is right too.
            "replaced_right": sum(r["model_verdict"] == "right" for r in touched),
            "replaced_right_now_wrong": sum(r["model_verdict"] == "right" and r["verdict"] != "right" for r in touched),
        }
    return summary


def evaluate_answers(
    corpus: list[Path],
    items: list[QAItem],
    settings: Settings,
    *,
    progress: bool | None = None,
    index_type: str | None = None,
    backends: list[str] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One result ({"summary", "rows", "errors"}) per backend spec (``extractive``,
    ``llamacpp:gemma3-270m``, ``vllm``...), on one ingest of the corpus; ``on_result`` gets
    each as soon as its backend is done (a later backend failing to start loses nothing)."""
    from ingest.runner import ingest
    from rag.embedder import SentenceTransformerEmbedder
    from rag.pipeline import build_pipeline

    updates = [(spec, backend_settings(spec)) for spec in backends or [settings.backend]]  # a typo fails first
    results = []
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as scratch:
        base = settings.model_copy(update={"data_dir": Path(scratch), "cache_enabled": False})
        embedder = SentenceTransformerEmbedder.from_settings(base).load()
        ingest(corpus, "eval", base, embedder, progress=progress, index_type=index_type)
        warning = None
        for spec, update in updates:
            pipeline = build_pipeline(base.model_copy(update=update), embedder)
            warning = warning or gold_id_warning(items, pipeline.get_index("eval").document_ids())

            async def run(pipeline: Any = pipeline, label: str = spec) -> tuple[list[Any], list[Any]]:
                try:
                    return await _ask_all(pipeline, items, progress, label)
                finally:
                    await pipeline.aclose()

            rows, errors = asyncio.run(run())
            summary = {**summarise(rows, pipeline.generator.name), "errors": len(errors)}
            result = {"summary": {**summary, **({"warning": warning} if warning else {})}, "rows": rows}
            results.append({**result, "errors": errors})
            if on_result is not None:
                on_result(results[-1])
    return results


def backend_settings(spec: str) -> dict[str, Any]:
    """The settings a backend spec (``name[:model]``) stands for; an unknown name or model is a
    clear error before anything is ingested."""
    from rag.generators import available_generators
    from rag.generators.llamacpp import MODELS

    name, _, model = spec.partition(":")
    if name not in available_generators():
        raise InvalidRequestError(
            f"unknown backend {name!r} in {spec!r} - choose from {', '.join(available_generators())}"
        )
    if model and name == "llamacpp" and model not in MODELS:
        raise InvalidRequestError(f"unknown llama.cpp model {model!r} in {spec!r} - choose from {', '.join(MODELS)}")
    update: dict[str, Any] = {"backend": name}
    if model and name == "llamacpp":
        update["llamacpp_model"] = model
    elif model and name == "vllm":
        update["vllm_model"] = model
    return update


def format_summary(summary: dict[str, Any]) -> str:
    def line(label: str, r: dict[str, Any]) -> str:
        if not r["n"]:
            return f"  {label:<13} n=0"
        if label == "unanswerable":  # abstaining is the right reply here
            return (
                f"  {label:<13} n={r['n']:<4} abstained {r['abstained']:>4} ({r['abstained_rate']:.1%}, the right reply)  "
                f"wrong {r['wrong']:>4} ({r['wrong_rate']:.1%})"
            )
        return (
            f"  {label:<13} n={r['n']:<4} right {r['right']:>4} ({r['right_rate']:.1%})  "
            f"abstained {r['abstained']:>4} ({r['abstained_rate']:.1%})  wrong {r['wrong']:>4} ({r['wrong_rate']:.1%})"
        )

    out = [
        f"{summary['backend']}: {summary['questions']} questions, p50 {summary['latency_p50_ms']:.0f} ms, "
        f"p95 {summary['latency_p95_ms']:.0f} ms, {summary['quoted']} answers quoted",
        line("answerable", summary["answerable"]),
        line("unanswerable", summary["unanswerable"]),
        *(
            [f"  errors        {summary['errors']} questions failed (not judged; listed below)"]
            if summary.get("errors")
            else []
        ),
    ]
    if summary.get("citation_recall") is not None:
        out.append(f"  citation recall {summary['citation_recall']:.3f}, token F1 {summary['f1']:.3f}")
    if summary.get("answer_words_p50") is not None:
        out.append(f"  answers given: median {summary['answer_words_p50']:.0f} words (a longer quote contains more)")
    for kind, rates in summary["by_kind"].items():
        out.append(line(kind, rates))
    if "guard" in summary:
        g = summary["guard"]
        out.append(
            f"  guard: the model alone was right {g['model_right']}, wrong {g['model_wrong']}, abstained "
            f"{g['model_abstained']}; the guard acted on {g['acted']}: caught {g['caught']} wrong answers, "
            f"missed {g['missed']}, replaced {g['replaced_right']} right ones "
            f"({g['replaced_right_now_wrong']} of them ended not right)"
        )
    return "\n".join(out)


def format_wrong(rows: list[dict[str, Any]]) -> str:
    """Every wrong answer, with why it is wrong (and what the model said, if the guard acted)."""
    out = []
    for r in rows:
        if r["verdict"] != "wrong":
            continue
        out.append(f"  [{r['id']}] {r['question']}\n      answer: {r['answer']}\n      why: {r['why']}")
        if r.get("model_answer") is not None and r["model_answer"] != r["answer"]:
            out.append(f"      model said: {r['model_answer']}  (guard: {r['guard']})")
    return "\n".join(out) if out else "  none"


def write_results(result: dict[str, Any], out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"answers-{name}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return path


def plot(out_dir: Path) -> Path:
    """answers.png: right / abstained / wrong of every run in ``out_dir`` (answerable and
    unanswerable questions apart), one bar each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for path in sorted(out_dir.glob("answers-*.json")):
        summary = json.loads(path.read_text()).get("summary", {})
        if "answerable" in summary:
            runs.append((path.stem.removeprefix("answers-"), summary))
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.2 + 0.45 * max(1, len(runs))), squeeze=False)
    colours = {"right": "#2e7d32", "abstained": "#9e9e9e", "wrong": "#c62828"}
    for ax, group in zip(axes[0], ("answerable", "unanswerable"), strict=True):
        y = range(len(runs))
        left = [0.0] * len(runs)
        for verdict in VERDICTS:
            widths = [(s[group][f"{verdict}_rate"] or 0.0) for _, s in runs]
            ax.barh(list(y), widths, left=left, color=colours[verdict], label=verdict)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_yticks(list(y), [name for name, _ in runs], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(f"{group} questions")
        ax.invert_yaxis()
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = out_dir / "answers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
