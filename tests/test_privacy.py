"""Customers' personal data: card numbers out of everything kept, secrets out of the logs."""

from __future__ import annotations

import pytest

from rag.privacy import mask_cards, safe_url, without_card_numbers


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("my card 4111 1111 1111 1111 was charged twice", "my card [card number] was charged twice"),
        ("card 4111111111111111, how long do refunds take?", "card [card number], how long do refunds take?"),
        # a security code or an expiry run on after the number: the card is still found, and they go too
        ("Refund to card 4111 1111 1111 1111 123 please", "Refund to card [card number] please"),
        ("Card 4111 1111 1111 1111 12/25 was charged", "Card [card number] was charged"),
        ("Card 4111.1111.1111.1111 was charged", "Card [card number] was charged"),  # other separators
        ("Card 4111 - 1111 - 1111 - 1111 was charged", "Card [card number] was charged"),
        (
            "Card \u0664\u0661\u0661\u0661 " + "\u0661\u0661\u0661\u0661 " * 3 + "was charged",
            "Card [card number] was charged",
        ),
        ("\uff14\uff11\uff11\uff11 " + "\uff11\uff11\uff11\uff11 " * 3, "[card number] "),  # full-width digits
        ("amex 3782 822463 10005", "amex [card number]"),
        ("5555 5555 5555 4444 and 4012888888881881", "[card number] and [card number]"),
        ("my card [card number], cvv 123", "my card [card number], cvv [security code]"),
        ("CVC: 1234", "CVC: [security code]"),
        ("the cvv is 123", "the cvv is [security code]"),
        ("card 4111 1111 1111 1111 12/25 123 ok", "card [card number] ok"),  # expiry and code
        ("amex 3782 822463 10005 exp 04/27", "amex [card number]"),
        # hidden by what a paste from a web page or a PDF carries between the digits
        ("card 4111\u200b1111\u200b1111\u200b1111 charged", "card [card number] charged"),
        ("card 4111\u00ad1111\u00ad1111\u00ad1111", "card [card number]"),
        # a phone number before it, on its line or the line before, hides none of it
        ("Phone: 261 375 9975\n4645 8528 5353 0985", "Phone: 261 375 9975\n[card number]"),
        ("call 261 375 9975 4111 1111 1111 1111 today", "call 261 375 9975 [card number] today"),
        ("call 261-375-9975 4111 1111 1111 1111", "call 261-375-9975 [card number]"),
        ("In 2024 4111 1111 1111 1111 was charged", "In 2024 [card number] was charged"),  # a year before it
        ("card 4111  1111\t1111  1111", "card [card number]"),  # two spaces, a tab
        ("card 4111\u200e1111\u200e1111\u200e1111", "card [card number]"),  # a bidirectional mark
        ("card \u2463\u2460\u2460\u2460 " + "\u2460\u2460\u2460\u2460 " * 3, "card [card number] "),  # circled
        ("card 4111 1111 1111 1111 1225 123 ok", "card [card number] ok"),  # an expiry with no slash
        ("refund to 4111111111111111. Order #4521", "refund to [card number]. Order #4521"),  # "to 41..." no IBAN
        ("CV2 123, cvv code is 4321", "CV2 [security code], cvv code is [security code]"),
        (
            "card code 123, cvv\u00b2 456",
            "card code [security code], cvv\u00b2 [security code]",
        ),  # its words as written
        # an order or booking named beside a card does not make the card an order number
        ("The card I used for this order is 4111 1111 1111 1111", "The card I used for this order is [card number]"),
        ("refund the card on my order: 4111 1111 1111 1111", "refund the card on my order: [card number]"),
        ("amex 3782 8224 6310 005, diners 3056 9309 0259 04", "amex [card number], diners [card number]"),  # in fours
        ("card 4111 1111 1111 1111 12 25 123 ok", "card [card number] ok"),  # a spaced expiry
        ("In 2024 4111 1111 1111 1111 1225 123", "In 2024 [card number]"),
        ("cards 4111 1111 1111 1111 5555 5555 5555 4444", "cards [card number] [card number]"),  # two in one run
        ("IBAN, to 4111111111111111", "IBAN, to [card number]"),  # no IBAN's check digits
        ("\uff14\uff11\uff11\uff11\uff0d" + "\uff11\uff11\uff11\uff11\uff0d" * 2 + "\uff11" * 4, "[card number]"),
        ("CVV 4111 1111 1111 1111", "CVV [card number]"),  # the card, not a code and 12 digits
        # what follows a card is kept: an amount, a date
        ("card 4111 1111 1111 1111, 300 EUR, on 2024-03-01", "card [card number], 300 EUR, on 2024-03-01"),
        ("card 4111.1111.1111.1111 12/25 cvv 123", "card [card number] cvv [security code]"),
        # only the card's characters change: the rest is kept as written (not NFKC, not ASCII digits)
        (
            "Hi\u2122 my card is 4111 1111 1111 1111 \u2013 Jose\u0301",
            "Hi\u2122 my card is [card number] \u2013 Jose\u0301",
        ),
        (
            "\ufb01ne \u0661\u0662\u0663\u0664\u0665 cvv 123",
            "\ufb01ne \u0661\u0662\u0663\u0664\u0665 cvv [security code]",
        ),
        # not cards: an IMEI (15 digits, not 34/37), an order number that fails Luhn, a phone number
        ("imei 356938035643809", "imei 356938035643809"),
        ("order 1234567890123", "order 1234567890123"),
        ("call +44 7700 900123", "call +44 7700 900123"),
        ("order 4111 1111 1111 1112", "order 4111 1111 1111 1112"),
        # numbers grouped otherwise, each of these with a Luhn-valid 16 digits inside
        ("booked from 2024-04-11 - 2024-11-11", "booked from 2024-04-11 - 2024-11-11"),  # 4111 1111 1111 11..
        ("call 411-111-1111 / 111-111-1112", "call 411-111-1111 / 111-111-1112"),
        ("prices 41.11 11.11 11.11 11.11", "prices 41.11 11.11 11.11 11.11"),
        ("IBAN DE95 4111 1111 1111 1111 00", "IBAN DE95 4111 1111 1111 1111 00"),  # its check digits hold
        ("tracking 4111 1111 1111 1111 7692 79", "tracking 4111 1111 1111 1111 7692 79"),
        ("tracking 9400 4111 1111 1111 1111 12", "tracking 9400 4111 1111 1111 1111 12"),
        ("Order placed 2024/04/11\n1111 1111 1111", "Order placed 2024/04/11\n1111 1111 1111"),
        ("call me on +41111111111114", "call me on +41111111111114"),  # a phone number, with its +
        ("EAN 4111111111111", "EAN 4111111111111"),
        ("answer_id a4111111111111111b9c0d", "answer_id a4111111111111111b9c0d"),  # an id's hex, glued to letters
        (
            "the years 2015 2016 2017 2018, RTX 3060 3070 3080 4090",
            "the years 2015 2016 2017 2018, RTX 3060 3070 3080 4090",
        ),
        ("gift card code 123", "gift card code 123"),
        (
            "CID 4521, where is my parcel?",
            "CID 4521, where is my parcel?",
        ),  # a customer id, not a code  # 13 digits: a barcode (13-digit cards are long gone)
        # card-shaped and Luhn-valid, but said to be something else
        ("Order no. 4111 1111 1111 1111 has not arrived", "Order no. 4111 1111 1111 1111 has not arrived"),
        ("My order 4111111111111111 has not arrived", "My order 4111111111111111 has not arrived"),
        ("Invoice 4111 1111 1111 1111", "Invoice 4111 1111 1111 1111"),
        ("my gift card code 4111-1111-1111-1111", "my gift card code 4111-1111-1111-1111"),
        ("refund to iban de95 4111 1111 1111 1111 00", "refund to iban de95 4111 1111 1111 1111 00"),
        ("no digits at all", "no digits at all"),
    ],
)
def test_card_numbers_are_found_however_they_are_written(text: str, kept: str) -> None:
    assert mask_cards(text) == kept


def test_every_string_and_card_sized_integer_of_a_body_is_masked() -> None:
    body = {"messages": [{"content": [{"type": "text", "text": 4111111111111111}]}], "top_k": 5, "stream": True}
    assert without_card_numbers(body) == {
        "messages": [{"content": [{"type": "text", "text": "[card number]"}]}],
        "top_k": 5,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://desk.example.com/hook?token=s3cr3t", "https://desk.example.com/hook?***"),
        ("redis://:pw@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("postgresql://rag:pw@[::1]:5432/rag", "postgresql://rag:***@[::1]:5432/rag"),
        ("http://127.0.0.1:8100", "http://127.0.0.1:8100"),
    ],
)
def test_a_url_in_a_log_line_keeps_no_secret(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_a_card_split_over_two_chat_text_parts_is_found_in_their_joined_text() -> None:
    from serving.openai_compat import ChatMessage

    parts = [{"type": "text", "text": "card 4111 1111 "}, {"type": "text", "text": "1111 1111 charged"}]
    assert ChatMessage(role="user", content=parts).text() == "card [card number] charged"
