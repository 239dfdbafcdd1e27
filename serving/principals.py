"""Who is calling: a key's principal (its id, collections, admin and public flags) or the anonymous user
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
    public: bool = False
    """A key that sits in a web page (the chat widget's): anyone can read it, so limits per
    visitor apply, and it reaches only what a visitor needs (no batch jobs; its thumbs-down
    on a curated answer hands it to a person without taking it out of service)."""

    @property
    def label(self) -> str:
        return self.key_id or "anonymous"

    def can_read(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    def collection_for(self, named: str | None, default: str) -> str:
        """The collection a request means: the one it names, else the key's only one (a key
        made for one collection need not name it each time), else RAG_COLLECTION."""
        if named:
            return named
        if self.collections is not None and len(self.collections) == 1:
            return next(iter(self.collections))
        return default

    def require_collection(self, collection: str) -> None:
        if not self.can_read(collection):
            raise PermissionDeniedError(
                f"this API key cannot read collection {collection!r} - use a key created with "
                f"`rag keys create --collections {collection}`",
                param="collection",
            )

    def require_private(self, what: str) -> None:
        if self.public:
            raise PermissionDeniedError(
                f"a public key (`rag keys create --public`, the widget's) cannot use {what} - "
                "use a key created without --public, kept on a server"
            )

    def require_admin(self) -> None:
        if not self.admin:
            raise PermissionDeniedError("this route needs an admin key (`rag keys create --admin`)")


ANONYMOUS = Principal(None, None, True)


def principal_of(request: Any) -> Principal:
    """The caller of a request that went through GuardMiddleware."""
    return getattr(request.state, "principal", ANONYMOUS)
