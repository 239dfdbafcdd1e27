"""A cheap grounding check on generated answers.

Small models sometimes answer in the right shape with the wrong figure ("refunds take 10
business days" when the passage says 5 to 7). In support answers the figures (prices,
days, limits, phone numbers) are what customers act on, so an answer that states a number
found nowhere in the context it was shown is not served: the pipeline falls back to the
best-matching sentences of that context.
"""

from __future__ import annotations

import re

_NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*")


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER_RE.findall(text)}


def unsupported_numbers(answer: str, context: str) -> set[str]:
    """Numbers in ``answer`` that do not occur in ``context``."""
    return _numbers(answer) - _numbers(context)
