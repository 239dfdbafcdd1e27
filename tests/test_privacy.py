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
        # not cards: an IMEI (15 digits, not 34/37), an order number that fails Luhn, a phone number
        ("imei 356938035643809", "imei 356938035643809"),
        ("order 1234567890123", "order 1234567890123"),
        ("call +44 7700 900123", "call +44 7700 900123"),
        ("order 4111 1111 1111 1112", "order 4111 1111 1111 1112"),
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
