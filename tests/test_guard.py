"""The faithfulness guard, clause by clause, on the mistakes small models make about a help
centre: invented figures, names, flipped negations and conditions, a bare yes or no."""

import pytest

from rag.compress import split_sentences
from rag.evidence import units_of
from rag.guard import ClauseGuard, check

from .conftest import EXAMPLES

CANCEL = [
    "You can cancel an order yourself within 2 hours of placing it, as long as it has not been packed yet.",
    'After 2 hours, or once the status shows "Packed", the order can no longer be cancelled.',
]
SHIPPING = ["We ship to 24 countries, including all EU member states, Norway, Switzerland and the United States."]
GIFT = [
    "Gift cards never expire and can be used on any product, in several orders, until the balance runs out.",
    "They cannot be exchanged for cash, and they cannot be used to buy other gift cards.",
]
POINTS = ["Members earn 1 Hearth Point for every £1 spent on products (delivery charges do not earn points)."]
RETURNS = [
    "Bedding, mattresses that have been unwrapped, and personalised items cannot be returned unless they are faulty.",
    "You can return most items within 30 days of delivery.",
]
PAYMENT = ["We do not accept cash on delivery, cheques or bank transfers for online orders."]
GIFT_RU = ["Подарочные карты никогда не истекают и действуют для любых товаров."]
REFUNDS = ["Refunds go back to the original payment method and take 5 to 7 business days to appear on your statement."]
INSPECTION = ["We inspect returns within 2 business days of receiving them.", *REFUNDS]
DELIVERY = [
    "Standard delivery: Time 3 to 5 business days; Price £4.95, free on orders over £50.",
    "Express delivery: Time 1 to 2 business days (order before 2pm); Price £9.95.",
]

CASES = [
    # (evidence, answer, what may be served: None when nothing of it stands)
    (CANCEL, "Yes, you can cancel your order within 2 hours of placing it.", "You can cancel your order within 2 hours of placing it."),
    (CANCEL, "No, after 2 hours the order can no longer be cancelled.", "After 2 hours the order can no longer be cancelled."),
    (CANCEL, "Yes, you can cancel it within 3 hours.", None),  # a figure the page does not give
    (CANCEL, "You can cancel an order after 2 hours.", None),  # the condition turned around
    (CANCEL, "I don't know from these documents.", None),
    (SHIPPING, "Yes, I deliver to Canada.", None),  # a name the page does not give
    (SHIPPING, "Yes, we ship to Norway.", "We ship to Norway."),
    (GIFT, "Yes, they do.", None),  # nothing checkable: the quote is served instead
    (GIFT, "No, gift cards never expire.", "Gift cards never expire."),
    (GIFT, "Gift cards can be exchanged for cash.", None),  # the negation dropped
    (GIFT, "Gift cards expire.", None),
    (GIFT, "They never expire, and you can use them on any product.", "They never expire, and you can use them on any product."),
    (GIFT, "Gift cards can't be exchanged for cash.", "Gift cards can't be exchanged for cash."),
    (POINTS, "You earn 1 point for every £1 you spend on products.", "You earn 1 point for every £1 you spend on products."),
    (POINTS, "Delivery charges earn points too.", None),
    (RETURNS, "Yes, you can return an unwrapped mattress within 30 days.", None),  # true of most items, not of these
    (RETURNS, "Unwrapped mattresses cannot be returned unless they are faulty.", "Unwrapped mattresses cannot be returned unless they are faulty."),
    (PAYMENT, "Yes, we accept cash on delivery.", None),
    (REFUNDS, "Refunds take 10 business days.", None),
    (REFUNDS, "Refunds take five to seven business days.", "Refunds take five to seven business days."),
    # A figure moved to another fact of the same kind (Gemma's, and the integrator's): both
    # numbers are in the documents, but not for this.
    (INSPECTION, "Refunds are processed within 2 business days of receiving them.", None),
    (INSPECTION, "We inspect returns within 2 business days.", "We inspect returns within 2 business days."),
    (DELIVERY, "Express delivery takes 3 to 5 business days.", None),
    (DELIVERY, "Express delivery takes 1 to 2 business days.", "Express delivery takes 1 to 2 business days."),
    (DELIVERY, "Express delivery costs £9.95.", "Express delivery costs £9.95."),  # a price: not a duration
    # Another script: its words are content words too (they were not, and every answer was replaced).
    (GIFT_RU, "Подарочные карты никогда не истекают.", "Подарочные карты никогда не истекают."),
    (GIFT_RU, "Подарочные карты можно обменять на деньги.", None),  # words the page does not give
]  # fmt: skip


@pytest.mark.parametrize(("evidence", "answer", "served"), CASES)
def test_the_guard_serves_only_what_the_evidence_supports(evidence: list[str], answer: str, served: str | None) -> None:
    verdict = check(answer, evidence)
    assert (verdict.text or None) == served, verdict.reason
    if served is None:
        assert verdict.replaced and verdict.reason


def test_an_answer_is_cut_at_its_first_unsupported_clause() -> None:
    verdict = check("Refunds take 5 to 7 business days, and we pay you £20 for the trouble.", REFUNDS)
    assert verdict.text == "Refunds take 5 to 7 business days." and "20" in (verdict.reason or "")


def test_a_stream_releases_clauses_only_once_they_pass_and_adds_up_to_the_answer() -> None:
    answer = "Yes, gift cards never expire, and they can be used on any product. They can be exchanged for cash."
    guard = ClauseGuard(GIFT)
    released = []
    for token in answer.replace(" ", " \0").split("\0"):  # word by word, as a model streams
        out = guard.feed(token)
        if out:
            assert "Yes" not in out and "exchanged for cash" not in out
            released.append(out)
    released.append(guard.close())
    assert "".join(released) == guard.text == check(answer, GIFT).text
    assert guard.text == "Gift cards never expire, and they can be used on any product."
    assert released[0] == "Gift cards never expire"  # the first clause went out before the answer ended


def test_a_sentence_does_not_end_at_an_initial_or_a_title() -> None:
    """XQuAD's find: "... Raymond S. Bradley and Malcolm K." and "Hughes. The graph was nicknamed
    ..." were two units, and the quote stopped at an initial."""
    text = (
        "The report featured a graph based on a paper by Michael E. Mann, Raymond S. Bradley and Malcolm K. "
        "Hughes. It became known as the hockey stick graph. We ship to U.S. addresses. Ask Dr. Li. It is free."
    )
    assert units_of(text) == [
        "The report featured a graph based on a paper by Michael E. Mann, Raymond S. Bradley and Malcolm K. Hughes.",
        "It became known as the hockey stick graph.",
        "We ship to U.S. addresses.",
        "Ask Dr. Li.",
        "It is free.",
    ]
    assert split_sentences(text)[0].endswith("Malcolm K. Hughes.")
    # A sentence that ends at a single capital or a title still ends there (a reviewer's cases).
    for two in (
        "We only ship within the U.S. Orders to Canada take 10 days.",
        "Take vitamin C. It helps your immune system.",
        "Choose Plan B. It costs less each month.",
        "Martin Luther King Jr. The march began.",
        "Our store is on Main St. Open daily from 9 to 5.",
    ):
        assert len(units_of(two)) == 2, two


def test_evidence_units_keep_lists_with_their_lead_in_and_table_rows_whole() -> None:
    payment = units_of((EXAMPLES / "payment-methods.md").read_text())
    assert payment[0].startswith("We accept: Visa, Mastercard") and "; PayPal; Apple Pay and Google Pay;" in payment[0]
    assert "We do not accept cash on delivery, cheques or bank transfers for online orders." in payment
    cancel = units_of((EXAMPLES / "cancelling-an-order.md").read_text())
    assert "How to cancel an order" not in cancel  # a heading answers nothing
    assert "Pick a reason and confirm." in cancel  # a numbered step is its own unit
    rows = units_of("Option | Time | Price |\nExpress delivery | 1 to 2 business days | £9.95 |")
    assert rows == ["Express delivery: Time 1 to 2 business days; Price £9.95."]  # each value with its column
    # A Markdown table (an HTML page's, read by trafilatura): the header above the rule names
    # the columns, however long; a short row is still a statement, not a heading.
    plans = (
        "| Plan | Monthly price | Annual price (per month) |\n|---|---|---|\n| Growth | £29 | £24 |\n| Free | £0 | |"
    )
    assert units_of(plans) == ["Growth: Monthly price £29; Annual price (per month) £24.", "Free: Monthly price £0."]
    assert units_of("| Standard | 3 to 5 days |\n| Express | 1 to 2 days |") == [
        "Standard: 3 to 5 days.",  # no header: a first row of values is a row
        "Express: 1 to 2 days.",
    ]
    pairs = "| Opening hours | Monday to Friday |\n| Phone | Call us on the number below |\n| Email | Write to us |"
    assert units_of(pairs) == [  # two columns, no rule: pairs, the first one a fact like the others
        "Opening hours: Monday to Friday.",
        "Phone: Call us on the number below.",
        "Email: Write to us.",
    ]
    assert units_of("| Plan | Price |\n|-|-|\n| Growth | £29 |") == ["Growth: Price £29."]  # a one-dash rule
