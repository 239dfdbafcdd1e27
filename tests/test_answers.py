"""`rag eval answers`: every answer judged right, abstained or wrong without an LLM judge."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.answers import judge
from eval.data import QAItem, contains_answer, load_qa

from .conftest import EXAMPLES, ROOT

HELP_CENTRE_QA = ROOT / "eval" / "sets" / "help-center" / "qa.jsonl"
CANADA = QAItem(
    "hc-x",
    "do you deliver to canada?",
    ["No: we ship to 24 countries."],
    facts=[["24 countries", "Norway", "United States"]],
    forbidden=[r"^\W*(yes|sure)\b", r"\bwe (do )?(deliver|ship)\w* to canada"],
)


def test_a_forbidden_claim_is_wrong_and_the_gold_facts_make_an_answer_right() -> None:
    assert judge(CANADA, "Yes, I deliver to Canada.")[0] == "wrong"
    assert judge(CANADA, "We ship to Canada and 23 other countries.")[1].startswith("forbidden claim")
    assert judge(CANADA, "We ship to 24 countries, including Norway and the United States.") == ("right", "")
    assert judge(CANADA, "We don't deliver to Canada.") == ("wrong", "missing: 24 countries | Norway | United States")
    assert judge(CANADA, "I don't know from these documents.")[0] == "abstained"


def test_unanswerable_questions_want_an_abstention_and_long_gold_answers_a_restatement() -> None:
    none = QAItem("u", "who is your ceo?", [])
    assert judge(none, "I don't know from these documents.")[0] == "abstained"
    assert judge(none, "Our CEO is Jane.")[0] == "wrong"
    faq = QAItem(
        "f",
        "how does it spread?",
        [
            "The virus spreads mainly between people who are in close contact with each other. "
            "It can spread when an infected person coughs, sneezes, sings, talks or breathes, "
            "and others nearby inhale the small liquid particles."
        ],
    )
    assert judge(faq, "The virus spreads mainly between people who are in close contact.")[0] == "right"
    assert judge(faq, "Wash your hands often with soap and water.")[0] == "wrong"
    squad = QAItem("s", "how many points?", ["308"])
    assert judge(squad, "The Panthers defense gave up just 308 points.")[0] == "right"


def test_a_gold_answer_counts_whole_words_with_punctuation_as_a_break() -> None:
    """XQuAD's gold "5" is in "a 5-cylinder engine", "Tyndale" in "Tyndale's", "1185" in
    "(1185-1226)"; "5" is not in "50", nor "art" in "party"."""
    assert contains_answer("It has a 5-cylinder engine.", ["5"])
    assert contains_answer("It was Tyndale's translation.", ["Tyndale"])
    assert contains_answer("Francis of Assisi (1185\u20131226) founded it.", ["1185"])
    assert contains_answer("The Denver Broncos won.", ["Denver Broncos"])
    assert not contains_answer("It cost 50 dollars.", ["5"])
    assert not contains_answer("We threw a party.", ["art"])
    assert not contains_answer("Broncos Denver", ["Denver Broncos"])


def test_the_help_centre_set_is_well_formed() -> None:
    items = load_qa(HELP_CENTRE_QA)
    answerable = [i for i in items if i.answers]
    assert len(items) >= 80 and len(items) - len(answerable) >= 20
    assert all(i.facts for i in answerable) and all(i.kind for i in items)
    for item in answerable:  # a right answer is possible: the reference answer is right
        assert judge(item, item.answers[0])[0] == "right", item.id


def test_rag_eval_answers_judges_each_backend_prints_the_wrong_answers_and_plots(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    lines = HELP_CENTRE_QA.read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    picked = [line for line, k in zip(lines, kinds, strict=True) if k == "yes_no_trap"][:4]
    picked += [line for line, k in zip(lines, kinds, strict=True) if k == "unanswerable"][:2]
    qa.write_text("\n".join(picked) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")} | {"HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "cli", "eval", "answers", "--corpus", str(EXAMPLES), "--qa", str(qa),
           "--limit", "0", "--backend", "extractive,instant", "--out", str(tmp_path), "--progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("answerable    n=") == 2 and done.stdout.count("wrong answers:") == 2
    assert "extractive: 6 questions" in done.stdout and "instant: 6 questions" in done.stdout
    assert "guard: the model alone was right" in done.stdout  # instant writes its own words: guarded
    assert "answering (extractive): 100%" in done.stderr and "6/6" in done.stderr  # the long part shows progress
    results = sorted(tmp_path.glob("answers-*.json"))
    assert len(results) == 2
    for path in results:
        result = json.loads(path.read_text())
        rows = result["rows"]
        assert {r["verdict"] for r in rows} <= {"right", "abstained", "wrong"} and len(rows) == 6
        given = sorted(len(r["answer"].split()) for r in rows if r["verdict"] != "abstained")
        assert given and given[0] <= result["summary"]["answer_words_p50"] <= given[-1]  # beside "contains"
    assert "the right reply" in done.stdout  # an abstention on an unanswerable question is not "0 right"
    assert (tmp_path / "answers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_backend_that_fails_costs_its_questions_and_the_results_before_it_are_kept(tmp_path: Path) -> None:
    from eval.answers import evaluate_answers
    from rag.errors import RagError

    from .conftest import make_settings

    items = [i for i in load_qa(HELP_CENTRE_QA) if i.kind == "number"][:3]
    settings = make_settings(tmp_path, vllm_url="http://127.0.0.1:9")  # nothing listens there
    finished: list[str] = []
    with pytest.raises(RagError):
        evaluate_answers([EXAMPLES], items, settings, backends=["extractive", "nope"], on_result=finished.append)
    assert finished == []  # a typo is found before anything is ingested
    results = evaluate_answers(
        [EXAMPLES], items, settings, backends=["extractive", "vllm"],
        on_result=lambda r: finished.append(r["summary"]["backend"]),
    )  # fmt: skip
    assert len(finished) == 2 and finished[0] == "extractive" and finished[1].startswith("vllm")  # each as it ended
    extractive, vllm = results
    assert extractive["summary"]["errors"] == 0 and len(extractive["rows"]) == 3
    assert vllm["summary"]["errors"] + len(vllm["rows"]) == 3 and vllm["errors"], vllm["errors"]
