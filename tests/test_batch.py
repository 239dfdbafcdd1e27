"""`rag batch`: one line out per question, in input order, failures recorded, resumable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

QUESTIONS = [
    "How long do refunds take?",
    "Do gift cards expire?",
    "",  # a bad question: recorded as an error, not lost
    "Which payment methods do you accept?",
    "How long is the password reset link valid?",
    "Do you ship internationally?",
    "How do I track my parcel?",
    "What does the warranty cover?",
]


def _batch(data_dir: Path, questions: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    args = ["batch", str(questions), "-o", str(out), "--concurrency", "4", "--data-dir", str(data_dir),
            "--backend", "extractive"]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_batch_answers_in_order_records_failures_and_resumes(tmp_path: Path, example_data_dir: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    out = tmp_path / "answers.jsonl"
    first = _batch(example_data_dir, questions, out)
    assert first.returncode == 0, first.stderr
    assert "7 answered, 1 failed, 0 already" in first.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == [f"q{i}" for i in range(8)]
    assert lines[2]["error"]["param"] == "question" and "answer" not in lines[2]
    assert all(r["citations"] and r["cache"]["hit"] is False for r in lines if "answer" in r)
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:5]))  # a run cut short
    second = _batch(example_data_dir, questions, out)
    assert second.returncode == 0, second.stderr
    assert "3 answered, 1 failed, 4 already" in second.stdout
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [f"q{i}" for i in range(8)]


def test_a_question_that_hits_a_bug_is_recorded_as_an_internal_error_and_the_rest_go_on() -> None:
    import asyncio

    from rag.batch import answer_each

    async def answer(item: dict[str, str]) -> dict[str, str]:
        if item["question"] == "boom":
            raise KeyError("content")  # a bug, not a RagError
        return {"answer": item["question"].upper()}

    records: dict[int, dict[str, object]] = {}
    items = [(n, {"id": str(n), "question": q}) for n, q in enumerate(["a", "boom", "c"])]
    counts = asyncio.run(answer_each(items, answer, 2, records.__setitem__))
    assert counts == {"answered": 2, "failed": 1}
    assert records[1]["error"] == {  # the one error shape, nothing of the traceback
        "message": "internal error - see the server log",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert [records[0].get("answer"), records[2].get("answer")] == ["A", "C"]


def test_a_repeated_id_or_a_bad_turn_is_refused_before_anything_is_asked(tmp_path: Path) -> None:
    from rag.batch import read_questions

    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"id": "x", "question": "How long do refunds take?"}\n{"id": 1, "question": "Do gift cards expire?"}\n'
        '{"id": "x", "question": "Which payment methods do you accept?"}\n'
    )
    with pytest.raises(ValueError, match="line 3 repeats the id 'x' of line 1"):  # resumed, one answer was lost
        read_questions(questions)
    questions.write_text('{"id": "1", "question": "Is it open?"}\n{"id": 1, "question": "Is it closed?"}\n')
    with pytest.raises(ValueError, match="line 2 repeats the id 1 "):  # 1 and "1" name one output line
        read_questions(questions)
    questions.write_text('{"question": "And then?", "history": [{"role": "bot", "content": "Hi"}]}\n')
    with pytest.raises(ValueError, match="line 1: history"):
        read_questions(questions)
    questions.write_text(
        '{"question": "How long do refunds take?"}\n{"id": null, "question": "How long do refunds take?"}\n'
    )
    assert [q["id"] for q in read_questions(questions)] == ["line-1", "line-2"]  # no ids: their line numbers
