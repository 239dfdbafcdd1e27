"""Prompts that share prefixes, and routing by document set (rag.prompts, rag.generators.replicas).
The effect on the real vLLM's prefix cache is in tests/test_vllm.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rag.generators.replicas import ReplicaPool
from rag.prompts import chat_messages, completion_prompt, generation_request, prefix_key, prompt_passages
from rag.store import RetrievedChunk

from .conftest import make_settings

PAGES = [
    ("returns", 0, "Returns", "Items can be returned within 30 days of delivery for a full refund."),
    ("returns", 1, "Returns", "Refunds reach the original payment method within 5 to 10 business days."),
    ("shipping", 0, "Shipping", "Express delivery costs 9 euros and arrives the next working day."),
    ("warranty", 2, "Warranty", "The warranty covers manufacturing faults for two years."),
]


def _chunks(order: list[int], scores: list[float] | None = None) -> list[RetrievedChunk]:
    scores = scores or [0.9 - n / 10 for n in range(len(order))]
    return [
        RetrievedChunk(i, PAGES[i][0], "/src", PAGES[i][2], PAGES[i][1], PAGES[i][3], s)
        for i, s in zip(order, scores, strict=True)
    ]


def _split(prompt: str, question: str) -> str:
    assert prompt.count(question) == 1
    return prompt[: prompt.index(question)]


def test_same_chunks_in_any_score_order_give_a_byte_identical_prefix_in_document_order() -> None:
    a, b = _chunks([2, 0, 3, 1]), _chunks([1, 3, 0, 2])
    qa, qb = "How long do refunds take?", "when do i get my money back"
    doc_a = completion_prompt(qa, a, order="document")
    doc_b = completion_prompt(qb, b, order="document")
    assert _split(doc_a, qa) == _split(doc_b, qb)
    assert doc_a.endswith(f"Question: {qa}\nAnswer:")  # the question comes last
    # Sorted by document, then position: returns 0, returns 1, shipping, warranty.
    context = _split(doc_a, qa)
    assert (
        context.index("within 30 days")
        < context.index("5 to 10")
        < context.index("Express")
        < context.index("two years")
    )
    assert prefix_key(a, "document") == prefix_key(b, "document")
    # By score, the same chunks make different prompts, and keys (they begin elsewhere).
    assert _split(completion_prompt(qa, a), qa) != _split(completion_prompt(qb, b), qb)
    assert prefix_key(a) != prefix_key(b)
    chat_a, chat_b = chat_messages(qa, a, order="document"), chat_messages(qb, b, order="document")
    assert chat_a[:-1] == chat_b[:-1] and _split(chat_a[-1]["content"], qa) == _split(chat_b[-1]["content"], qb)


def test_the_context_budget_keeps_the_best_scored_chunks_before_reordering() -> None:
    chunks = _chunks([3, 2, 1, 0])  # warranty best, returns/0 worst
    kept = prompt_passages(chunks, "document", max_chars=len(PAGES[3][3]) + len(PAGES[2][3]) + 5)
    assert [(c.document_id, c.position) for c in kept] == [("shipping", 0), ("warranty", 2)]


def test_generation_request_carries_the_prefix_key_of_its_settings_order(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, prompt_order="document")
    one = generation_request("completion", "q one", _chunks([0, 1]), settings)
    two = generation_request("completion", "q two", _chunks([1, 0]), settings)
    assert one.prefix_key == two.prefix_key is not None
    # The key is where the context begins: a set that starts with the same passage shares
    # that much of the prompt and goes to the same replica; one that starts elsewhere may not.
    assert generation_request("completion", "q", _chunks([2, 0]), settings).prefix_key == one.prefix_key
    assert generation_request("completion", "q", _chunks([2, 3]), settings).prefix_key != one.prefix_key
    assert generation_request("none", "q", _chunks([0]), settings).prefix_key is None


def test_prefix_routing_sends_a_document_set_to_one_replica_and_spreads_the_sets() -> None:
    pool = ReplicaPool([f"http://r{n}" for n in range(3)], routing="prefix")
    keys = [f"set-{n}" for n in range(300)]
    first = {key: pool.pick(key=key).url for key in keys}
    assert all(pool.pick(key=key).url == first[key] for key in keys)  # stable
    spread = Counter(first.values())
    assert len(spread) == 3 and min(spread.values()) > 60  # about a third each
    assert all(first[key] == pool.preference(key)[0] for key in keys)


def test_a_failed_replica_moves_only_its_own_sets_to_their_second_choice() -> None:
    pool = ReplicaPool([f"http://r{n}" for n in range(3)], routing="prefix")
    keys = [f"set-{n}" for n in range(200)]
    before = {key: pool.pick(key=key).url for key in keys}
    pool.mark_failed(pool.replicas[1])
    after = {key: pool.pick(key=key).url for key in keys}
    for key in keys:
        if before[key] != "http://r1":
            assert after[key] == before[key]
        else:
            assert after[key] == pool.preference(key)[1]
    # Retried elsewhere after a failure: the key's next choice, not a random one.
    pool.mark_ok(pool.replicas[1])
    key = next(k for k in keys if before[k] == "http://r1")
    assert pool.pick(exclude={"http://r1"}, key=key).url == pool.preference(key)[1]


def test_a_busy_preferred_replica_shares_its_key_with_the_less_busy_of_its_two_choices() -> None:
    pool = ReplicaPool([f"http://r{n}" for n in range(3)], routing="prefix", load_factor=1.25)
    key = "hot-set"
    first, second, third = (next(r for r in pool.replicas if r.url == u) for u in pool.preference(key))
    assert pool.pick(key=key) is first  # an idle fleet: the key's own replica
    first.in_flight, second.in_flight, third.in_flight = 3, 3, 3
    assert pool.pick(key=key) is first  # its share, within the bound: ceil(1.25 * 10 / 3) = 5
    first.in_flight, second.in_flight, third.in_flight = 5, 2, 2
    assert pool.pick(key=key) is second  # a sixth would be over the bound: its second choice
    second.in_flight, third.in_flight = 6, 0
    assert pool.pick(key=key) is first  # the less busy of the two, never the third
    assert pool.pick() is third  # no key: least loaded


def test_round_robin_takes_the_healthy_replicas_in_turn() -> None:
    pool = ReplicaPool(["http://a", "http://b"], routing="round_robin")
    assert [pool.pick(key="k").url for _ in range(4)] == ["http://a", "http://b"] * 2
    pool.mark_failed(pool.replicas[0])
    assert {pool.pick().url for _ in range(3)} == {"http://b"}


def test_the_fleet_model_reuses_leading_full_blocks_on_the_replica_that_computed_them() -> None:
    from eval.prefix_sim import block_hashes, simulate

    shared = list(range(100, 148))  # three 16-token blocks
    one, two = [*shared, 1, 2, 3], [*shared, 7, 8, 9]
    assert block_hashes(one, 16)[:3] == block_hashes(two, 16)[:3]
    assert len(block_hashes(shared, 16)) == 2  # the last token is always computed: 47 usable
    # One replica: the second prompt finds the three shared blocks (48 of 102 tokens).
    assert simulate([one, two], ["k", "k"], 1, "round_robin", 16) == 48 / 102
    # Two replicas in turn: the second lands where nothing is cached; by key, where it is.
    assert simulate([one, two], ["k", "k"], 2, "round_robin", 16) == 0.0
    assert simulate([one, two], ["k", "k"], 2, "prefix", 16) == 48 / 102
    # A cache of two blocks has let the first one go by the time the second prompt comes.
    assert simulate([one, two], ["k", "k"], 1, "round_robin", 16, capacity_blocks=2) == 0.0


def test_a_bench_set_names_its_corpus_and_question_files() -> None:
    from eval.routing_bench import parse_set

    qset = parse_set("faq=data/corpus.jsonl:a.jsonl,b.jsonl")
    assert (qset.name, str(qset.corpus), [str(q) for q in qset.questions]) == (
        "faq",
        "data/corpus.jsonl",
        ["a.jsonl", "b.jsonl"],
    )
    with pytest.raises(ValueError, match="NAME=CORPUS:QUESTIONS"):
        parse_set("data/corpus.jsonl")


def test_the_bench_counts_answers_that_differ_from_round_robins() -> None:
    from eval.routing_bench import _differing

    assert _differing(["a", "b", "c"], None) == {}  # round robin itself is the baseline
    assert _differing(["a", "b", "c"], ["a", "x", "c"]) == {"answers_differing_from_round_robin": 1}
    with pytest.raises(ValueError):
        _differing(["a"], ["a", "b"])  # the same requests, or the comparison means nothing
