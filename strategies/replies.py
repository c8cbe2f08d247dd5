"""The replies a strategy may aggregate: the ones without an error, checked for consistency with Flower's public
`validate_message_reply_consistency` (the same check Flower's own strategies run)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency


def valid_replies(replies: Iterable[Message], weighted_by_key: str, train: bool = True) -> list[Message]:
    """The replies that carry content (errors dropped), validated: one ArrayRecord (train) and `weighted_by_key`."""
    valid = [m for m in replies if not m.has_error()]
    if valid:
        validate_message_reply_consistency([m.content for m in valid], weighted_by_key, check_arrayrecord=train)
    return valid
