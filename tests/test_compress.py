from rag.compress import best_sentences, compress, split_sentences
from rag.store import RetrievedChunk


def _chunk(i: int, text: str) -> RetrievedChunk:
    return RetrievedChunk(i, f"doc{i}", f"/src/{i}", f"Title {i}", 0, text, 0.9 - i / 10)


def test_sentences_split_on_ends_blank_lines_and_list_items_but_not_wrapped_lines() -> None:
    text = (
        "# A heading that is long enough\n\nThe first sentence is\nhard-wrapped here. The **second** one is bold!"
        "\n- a list item that is long\n\nShort."
    )
    assert split_sentences(text) == [
        "A heading that is long enough",
        "The first sentence is hard-wrapped here.",
        "The second one is bold!",
        "a list item that is long",
    ]  # fragments under 20 characters ("Short.") carry no answer


def test_best_sentences_pick_the_matching_fact_in_reading_order() -> None:
    passages = [
        _chunk(
            0, "Returns are free in the UK. Refunds take 5 to 7 business days to appear. We inspect returns quickly."
        ),
        _chunk(1, "Gift cards never expire. Refunds for gift card orders go to a new gift card."),
    ]
    best = best_sentences("How long do refunds take?", passages, 2)
    assert [s for _, _, s in best] == [
        "Refunds take 5 to 7 business days to appear.",
        "Refunds for gift card orders go to a new gift card.",
    ]
    compressed = compress("How long do refunds take?", passages, 1)
    assert [(c.id, c.text) for c in compressed] == [(0, "Refunds take 5 to 7 business days to appear.")]
    assert compress("anything", passages, 0) == passages  # 0 turns compression off


def test_words_of_any_script_are_terms_so_their_sentences_can_be_evidence() -> None:
    from rag.compress import terms
    from rag.evidence import collect_units

    assert terms("Le café coûte 3 €.") == ["le", "café", "coûte", "3", "€"]
    chunk = _chunk(0, "Возврат денег занимает 5 рабочих дней. Подарочные карты не имеют срока действия.")
    units, _ = collect_units([chunk], window=0)
    assert [u.text for u in units] == [
        "Возврат денег занимает 5 рабочих дней.",
        "Подарочные карты не имеют срока действия.",
    ]  # each its own unit: none dropped as empty, none merged as a repeat


def test_a_window_that_bridges_two_spans_joins_all_three_and_quotes_no_sentence_twice() -> None:
    from rag.evidence import Unit, merge

    best, second, bridge = Unit(0, "", 3.0, 0, 1), Unit(0, "", 2.0, 3, 4), Unit(0, "", 1.0, 1, 3)
    assert merge([best, second, bridge]) == [Unit(0, "", 3.0, 0, 4)]
    elsewhere = Unit(1, "", 2.5, 3, 4)  # another chunk's sentences 3-4 are other sentences
    assert merge([best, elsewhere, Unit(0, "", 1.0, 2, 2)]) == [Unit(0, "", 3.0, 0, 2), elsewhere]
