"""The query pipeline in-process: what reaches the generator, and what it does with the reply."""

import asyncio
from pathlib import Path

from rag.generators import Generation, GenerationRequest
from rag.pipeline import Pipeline

from .conftest import make_settings


class ScriptedModel:
    """Fault injection: a completion model that answers with a fixed text, recording its prompt."""

    name = "scripted"
    prompt_style = "completion"
    can_stream = False
    supports_prefix_cache = False

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        return Generation(text=self.reply, prompt_tokens=100, completion_tokens=8)

    async def aclose(self) -> None:
        pass


def _pipeline(data_dir: Path, embedder, reply: str) -> tuple[Pipeline, ScriptedModel]:  # type: ignore[no-untyped-def]
    model = ScriptedModel(reply)
    return Pipeline(make_settings(data_dir, cache_enabled=False), embedder, model), model


async def test_llm_sees_the_best_sentences_and_cites_their_chunks(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    pipeline, model = _pipeline(example_data_dir, embedder, "Refunds take 5 to 7 business days.")
    answer = await pipeline.answer("How long do refunds take?")
    prompt = model.requests[0].prompt
    assert isinstance(prompt, str) and prompt.endswith("Question: How long do refunds take?\nAnswer:")
    assert "5 to 7 business days to appear on your statement" in prompt
    assert "**" not in prompt.split("Context:")[-1]  # markdown emphasis is stripped for the model
    assert model.requests[0].stop == ["\n"]
    assert answer.answer == "Refunds take 5 to 7 business days." and answer.grounded
    assert answer.citations[0].document_id == "returns-and-refunds.md"
    assert {c.id for c in answer.citations} == {p.id for p in model.requests[0].passages}


async def test_answer_with_an_invented_figure_falls_back_to_the_passage(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    pipeline, _ = _pipeline(example_data_dir, embedder, "Refunds are processed within 10 business days.")
    answer = await pipeline.answer("How long do refunds take?")
    assert not answer.grounded
    assert "10 business days" not in answer.answer and "5 to 7 business days" in answer.answer


async def test_irrelevant_question_never_reaches_the_model(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    pipeline, model = _pipeline(example_data_dir, embedder, "Paris.")
    answer = await pipeline.answer("What is the boiling point of mercury in kelvin?")
    assert answer.answer == "I don't know from these documents." and answer.citations == []
    assert model.requests == []


class SlowModel(ScriptedModel):
    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        await asyncio.sleep(0.3)
        return Generation(text=self.reply, prompt_tokens=100, completion_tokens=8)


async def test_concurrent_identical_misses_share_one_generation(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    model = SlowModel("Refunds take 5 to 7 business days.")
    pipeline = Pipeline(make_settings(example_data_dir, cache_enabled=False), embedder, model)
    answers = await asyncio.gather(
        *(pipeline.answer(q) for q in ["How long do refunds take?", "how long do refunds take"] * 3)
    )
    assert len(model.requests) == 1
    assert {a.answer for a in answers} == {"Refunds take 5 to 7 business days."}
    assert sum(not a.cache.hit for a in answers) == 1 and sum(a.cache.kind == "exact" for a in answers) == 5
    assert len({a.answer_id for a in answers}) == 6  # each caller's own, for its feedback
    other = await pipeline.answer("How long do refunds take?")  # nothing in flight now: a new generation
    assert len(model.requests) == 2 and not other.cache.hit


async def test_no_request_scans_the_whole_cache(tmp_path: Path, example_data_dir: Path, embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Counting the entries reads every key on disk: fine for `rag cache stats`, a disaster per
    request. A truthiness test (`if cache:`) used to call it on every question."""
    from cache import SemanticCache
    from rag.cache_policy import open_cache

    settings = make_settings(tmp_path)  # a cache of its own over the shared, ingested index
    (tmp_path / "collections").symlink_to(example_data_dir / "collections")
    model = ScriptedModel("Refunds take 5 to 7 business days.")
    pipeline = Pipeline(settings, embedder, model, open_cache(settings, embedder.dimension))

    def no_scans(self: SemanticCache) -> int:
        raise AssertionError("a request counted the whole cache")

    monkeypatch.setattr(SemanticCache, "__len__", no_scans)
    first = await pipeline.answer("How long do refunds take?")  # a miss, then stored
    again = await pipeline.answer("how long do refunds take")  # the exact tier
    await pipeline.answer("How long does a refund take?")  # the near-duplicate search
    assert (first.cache.hit, again.cache.kind) == (False, "exact")
    await pipeline.aclose()


async def test_a_guard_replaced_answer_is_quoted_and_never_outlives_its_index_version(
    tmp_path: Path, corpus: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    """The model's answer failed the guard: the quote served instead is cached for this index
    version only, since a new ingest may let the model answer properly."""
    from ingest.runner import ingest
    from rag.cache_policy import open_cache

    settings = make_settings(tmp_path / "data")
    ingest([corpus], "default", settings, embedder, progress=False)
    model = ScriptedModel("Refunds take 10 business days.")
    pipeline = Pipeline(settings, embedder, model, open_cache(settings, embedder.dimension))
    told: list[str | None] = []  # what the observers (metrics) are told, as they are told it
    pipeline.observers.append(lambda answer, _cacheable: told.append(answer.handoff_reason()))
    first = await pipeline.answer("How long do refunds take?")
    assert (first.answer_kind, first.grounded) == ("quoted", False) and "10 business days" not in first.answer
    assert "5 to 7 business days" in first.answer and first.citations
    assert first.citations[0].document_id == "returns-and-refunds.md"
    assert "guard_reason" not in first.to_dict() and "model_answer" not in first.to_dict()  # never sent
    again = await pipeline.answer("How long do refunds take?")
    assert again.cache.kind == "exact" and again.answer_kind == "quoted" and len(model.requests) == 1
    assert told == ["guard_replaced", "guard_replaced"]  # served again, it is still the guard's quote

    (corpus / "gift-cards.txt").write_text("Gift cards\n\nGift cards are valid for 5 years.\n")  # another page
    ingest([corpus], "default", settings, embedder, progress=False)
    assert pipeline.refresh() == ["default"]  # the version watcher's step, done now
    model.reply = "Refunds take 5 to 7 business days."
    after = await pipeline.answer("How long do refunds take?")
    assert not after.cache.hit and len(model.requests) == 2
    assert (after.answer, after.answer_kind) == ("Refunds take 5 to 7 business days.", "generated")
    await pipeline.aclose()


async def test_an_faq_entry_with_nothing_to_quote_leaves_the_other_passages_to_the_judge(
    tmp_path: Path, embedder
) -> None:  # type: ignore[no-untyped-def]
    import json

    from ingest.runner import ingest
    from rag.generators.extractive import ExtractiveGenerator

    docs = tmp_path / "docs"
    docs.mkdir()
    faq = [
        {"id": "wrap", "title": "Do you offer gift wrapping?", "text": "Yes."},
        {"id": "ship", "title": "Do you ship to Canada?", "text": "We ship to Canada in 5 to 8 business days."},
    ]
    (docs / "faq.jsonl").write_text("".join(json.dumps(e) + "\n" for e in faq))
    (docs / "gifts.md").write_text("# Gifts\n\nGift wrapping is available for £3 per item at checkout.\n")
    settings = make_settings(tmp_path / "data", cache_enabled=False)
    ingest([docs], "default", settings, embedder, progress=False)
    pipeline = Pipeline(settings, embedder, ExtractiveGenerator())
    answer = await pipeline.answer("Do you offer gift wrapping?")
    assert "£3 per item" in answer.answer and answer.citations[0].document_id == "gifts.md", answer
    await pipeline.aclose()


async def test_the_only_faq_entry_in_a_language_does_not_answer_every_question_in_it(tmp_path: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    """Both searches find the one French entry first for any French question (an English
    embedding model, the entry's words): the judge still has to read it as an answer."""
    import json

    from ingest.runner import ingest
    from rag.generators.extractive import ExtractiveGenerator

    docs = tmp_path / "docs"
    docs.mkdir()
    faq = [
        {"id": "reset-fr", "question": "Comment réinitialiser mon mot de passe ?",
         "answer": "Sur la page de connexion, cliquez sur Mot de passe oublié ? et saisissez votre adresse e-mail. "
                   "Le lien expire au bout de 60 minutes."},
        {"id": "cancel", "question": "How do I cancel my subscription?", "answer": "Go to Settings > Billing."},
    ]  # fmt: skip
    (docs / "faq.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in faq))
    settings = make_settings(tmp_path / "data", cache_enabled=False)
    ingest([docs], "default", settings, embedder, progress=False)
    pipeline = Pipeline(settings, embedder, ExtractiveGenerator())
    other = await pipeline.answer("Puis-je payer par PayPal ?")
    assert other.answer_kind == "no_answer", other.answer
    reset = await pipeline.answer("J'ai oublié mon mot de passe, que faire ?")
    assert "60 minutes" in reset.answer and reset.citations[0].document_id == "reset-fr", reset
    await pipeline.aclose()


async def test_a_card_number_never_reaches_the_model(example_data_dir: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    """The pipeline masks the question itself: `rag ask` and `rag batch` have no HTTP body."""
    pipeline, model = _pipeline(example_data_dir, embedder, "Refunds take 5 to 7 business days.")
    await pipeline.answer("card 4111 1111 1111 1111 123 was charged twice, how long do refunds take?")
    prompt = model.requests[0].prompt
    # masked, and the placeholder left out of what is read (it says nothing about what is asked)
    assert "1111" not in prompt and "Question: card was charged twice, how long do refunds take?" in prompt
