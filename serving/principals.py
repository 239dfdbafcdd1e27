"""Who is calling: a key's principal (its id, collections, admin flag) or the anonymous user
of a keyless, loopback-only service; what each may reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.errors import (
    PermissionDeniedError,
)

ALL = "*"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key (its id, collections, admin flag) or the anonymous local user."""

    key_id: str | None
    collections: frozenset[str] | None  # None: every collection
    admin: bool

    @property
    def label(self) -> str:
        return self.key_id or "anonymous"

    def can_read(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def require_collection(self, collection: str) -> None:
        if not self.can_read(collection):
            raise PermissionDeniedError(
                f"this API key cannot read collection {collection!r} - use a key created with "
                f"`rag keys create --collections {collection}`",
                param="collection",
            )

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDeniedError("this route needs an admin key (`rag keys create --admin`)")


ANONYMOUS = Principal(None, None, True)


def principal_of(request: Any) -> Principal:
    """The caller of a request that went through GuardMiddleware."""
    return getattr(request.state, "principal", ANONYMOUS)
