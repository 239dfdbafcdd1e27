"""Handoff: telling a help desk that a conversation needs a person.

An answer that abstains, a quote the guard put in place of the model's answer, and a
thumbs-down each mark the conversation ``needs_human`` (the answer's field; on the OpenAI
face also the ``X-RAG-Needs-Human`` header). With ``RAG_HANDOFF_WEBHOOK_URL`` set, each also
POSTs ``{"event": "needs_human", "handoff_id", "reason", "answer_id", "collection",
"question", "answer", "conversation"}`` there, from background tasks (four at once): retried
with exponential backoff (tenacity; at most 30 s apart, or a 429's Retry-After) on a
connection error, a 429 or a 5xx, never holding the answer up, and one handoff the help desk
keeps refusing holds up no other.

Each handoff is written to an outbox first (:class:`Outbox`: the support store's database,
SQLite or the PostgreSQL every replica shares) and taken out when the help desk has it, so a
restart or a crash loses none: a replica renews a lease on the ones it holds, and any replica
takes up those whose lease has lapsed (its own at start-up, another's that died). One that
still fails after 5 minutes of tries is tried again a minute later, for a day; a 4xx, or a
day, gives it up (logged; the row stays, ``given_up`` says why). Delivery is at least once:
``handoff_id`` is the same on every try, for a help desk to drop a repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

from rag.privacy import safe_url, without_url

if TYPE_CHECKING:
    from .support_store import _Postgres, _Sqlite

log = logging.getLogger("rag.serving")
QUEUE_LIMIT = 10_000  # handoffs held in memory; the rest wait in the outbox
SENDERS = 4  # handoffs in flight at once: one the help desk keeps refusing holds up no other
LEASE_S = 60.0  # a replica that has not renewed its handoffs for this long is taken to be gone
RETRY_LATER_S = 60.0  # after a round of tries fails, the next round starts this much later
MAX_AGE_S = 86_400.0  # a handoff not delivered in a day is given up


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


def _wait(exponential: Any, max_wait_s: float) -> Any:
    """A 429's Retry-After (seconds) when it gives one, else exponential backoff."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        after = exc.response.headers.get("retry-after", "") if isinstance(exc, httpx.HTTPStatusError) else ""
        return min(max_wait_s, float(after)) if after.isdigit() else float(exponential(state))

    return wait


class Outbox:
    """The handoffs not delivered yet, in the support store's database (its ``handoffs``
    table), each held by the replica sending it under a lease it renews."""

    _WAITING = "given_up IS NULL"

    def __init__(self, sql: _Sqlite | _Postgres, lease_s: float = LEASE_S) -> None:
        self.sql = sql
        self.owner = uuid.uuid4().hex  # this process
        self.lease_s = lease_s

    def add(self, event: dict[str, Any]) -> bool:
        """Write a new handoff, held by this process; False if it was there already."""
        now = time.time()
        insert = (
            "INSERT INTO handoffs (id, created_at, payload, owner, lease_until) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING"
        )
        payload = json.dumps(event, ensure_ascii=False)
        return bool(self.sql.apply([(insert, (event["handoff_id"], now, payload, self.owner, now + self.lease_s))])[0])

    def renew(self) -> None:
        """Extend the lease on every handoff this process holds."""
        renew = f"UPDATE handoffs SET lease_until = ? WHERE owner = ? AND {self._WAITING}"
        self.sql.apply([(renew, (time.time() + self.lease_s, self.owner))])

    def claim(self, limit: int) -> list[dict[str, Any]]:
        """Take up to ``limit`` waiting handoffs whose lease has lapsed, oldest first."""
        now = time.time()
        claim = (
            f"UPDATE handoffs SET owner = ?, lease_until = ? WHERE id IN (SELECT id FROM handoffs "
            f"WHERE {self._WAITING} AND lease_until < ? ORDER BY created_at LIMIT {int(limit)}) "
            f"AND lease_until < ? RETURNING payload"
        )
        rows = self.sql.query(claim, (self.owner, now + self.lease_s, now, now))
        return [json.loads(row[0]) for row in rows]

    def sent(self, handoff_id: str) -> None:
        """Delivered: the row goes (the answer log, not the outbox, keeps what was said)."""
        self.sql.apply([("DELETE FROM handoffs WHERE id = ?", (handoff_id,))])

    def release(self, handoff_id: str, after_s: float = 0.0) -> None:
        """Let any replica take it up, ``after_s`` from now."""
        release = f"UPDATE handoffs SET owner = NULL, lease_until = ? WHERE id = ? AND {self._WAITING}"
        self.sql.apply([(release, (time.time() + after_s, handoff_id))])

    def give_up(self, handoff_id: str, why: str) -> None:
        self.sql.apply([("UPDATE handoffs SET given_up = ? WHERE id = ?", (why[:500], handoff_id))])

    def expire(self, max_age_s: float = MAX_AGE_S) -> int:
        """Give up the handoffs older than ``max_age_s``; how many."""
        expire = f"UPDATE handoffs SET given_up = ? WHERE {self._WAITING} AND created_at < ?"
        why = f"not delivered in {max_age_s / 3600:g} h"
        return self.sql.apply([(expire, (why, time.time() - max_age_s))])[0]


class Handoff:
    def __init__(
        self,
        url: str | None,
        outbox: Outbox | None = None,
        give_up_s: float = 300.0,
        max_wait_s: float = 30.0,
        poll_s: float = 5.0,
    ) -> None:
        self.url = url
        self.outbox = outbox
        self.give_up_s = give_up_s  # a round of tries; with an outbox another round follows
        self.max_wait_s = max_wait_s
        self.poll_s = poll_s  # how often the leases are renewed and lapsed ones taken up
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._sending: dict[asyncio.Task[None], dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []  # the senders' loop, the outbox's
        self._writes: set[asyncio.Task[None]] = set()  # handoffs on their way into the outbox
        self._follower: asyncio.Task[None] | None = None  # renews this process's leases
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        """Start the senders (and, with an outbox, take up the handoffs a stop left)."""
        if self.url and not self._tasks:
            self._client = httpx.AsyncClient(timeout=10.0)
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._deliver()))
            if self.outbox is not None:
                self._follower = loop.create_task(self._follow_outbox())
                self._tasks.append(self._follower)

    def notify(self, event: dict[str, Any]) -> None:
        """Queue one handoff for the webhook (returns at once; nothing without a URL)."""
        if not self.url:
            return
        self.start()
        event = {"event": "needs_human", "handoff_id": f"{event['answer_id']}-{event['reason']}", **event}
        if self.outbox is None:
            self._enqueue(event)
        else:
            task = asyncio.get_running_loop().create_task(self._write(event))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, event: dict[str, Any]) -> None:
        """Into the outbox, then the queue; if the database is away, the queue alone."""
        assert self.outbox is not None
        try:
            if not await asyncio.to_thread(self.outbox.add, event):
                return  # handed over already (a repeated notify)
        except Exception:
            log.exception("handoff outbox: handoff %s not written; sent from memory", event["handoff_id"])
        await self._hold(event)

    async def _hold(self, event: dict[str, Any]) -> None:
        """Queue a handoff from the outbox; with the queue full it waits there for room."""
        assert self.outbox is not None
        if self._queue.full():
            await self._outbox(self.outbox.release, event["handoff_id"])
        else:
            self._queue.put_nowait(event)

    def _enqueue(self, event: dict[str, Any]) -> None:
        if self._queue.full():
            dropped = self._queue.get_nowait()
            self._queue.task_done()  # or drain() would wait for it at every shutdown
            log.error("handoff webhook queue full: dropped the handoff of answer %s", dropped.get("answer_id"))
        self._queue.put_nowait(event)

    async def _outbox(self, method: Any, *args: Any) -> Any:
        """An outbox call off the loop; a database away is logged, the handoff kept in memory."""
        try:
            return await asyncio.to_thread(method, *args)
        except Exception:
            log.exception("handoff outbox: %s failed", method.__name__)
            return None

    async def _follow_outbox(self) -> None:
        """Renew this process's leases; take up lapsed handoffs while there is room."""
        assert self.outbox is not None
        while True:
            await self._outbox(self.outbox.renew)
            expired = await self._outbox(self.outbox.expire)
            if expired:
                log.error("handoff webhook: %d handoffs given up, not delivered in a day", expired)
            room = QUEUE_LIMIT - self._queue.qsize()
            for event in (await self._outbox(self.outbox.claim, min(room, 500)) if room > 0 else None) or []:
                await self._hold(event)
            await asyncio.sleep(self.poll_s)

    async def _deliver(self) -> None:
        slots = asyncio.Semaphore(SENDERS)
        while True:
            await slots.acquire()  # first: a handoff waiting for a sender stays in the queue, where drain counts it
            event = await self._queue.get()
            task = asyncio.get_running_loop().create_task(self._send(event))
            self._sending[task] = event

            def done(task: asyncio.Task[None]) -> None:
                self._sending.pop(task, None)
                slots.release()
                self._queue.task_done()

            task.add_done_callback(done)

    async def _send(self, event: dict[str, Any]) -> None:
        assert self._client is not None and self.url is not None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(self.give_up_s),
                wait=_wait(wait_exponential(multiplier=0.25, max=self.max_wait_s), self.max_wait_s),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    response = await self._client.post(self.url, json=event)
                    response.raise_for_status()
        except Exception as exc:  # this round failed (a 4xx, or past give_up_s); the others still go
            self.failed += 1
            await self._failed(event, exc)
            return
        self.sent += 1
        if self.outbox is not None:
            await self._outbox(self.outbox.sent, event["handoff_id"])

    async def _failed(self, event: dict[str, Any], exc: Exception) -> None:
        later = self.outbox is not None and _retryable(exc)
        # Its URL's ?token= (or a Slack-style path) is a secret: neither logged nor kept.
        if isinstance(exc, httpx.HTTPStatusError):
            why = f"the help desk answered {exc.response.status_code} {exc.response.reason_phrase}"
        else:
            why = without_url(without_url(str(exc), self.url or ""), str(httpx.URL(self.url or "")))
        log.error(
            "handoff webhook %s failed for answer %s: %s%s", safe_url(self.url or ""), event.get("answer_id"), why,
            f"; tried again in {RETRY_LATER_S:g} s" if later else "; given up",
        )  # fmt: skip
        if self.outbox is not None:
            if later:
                await self._outbox(self.outbox.release, event["handoff_id"], RETRY_LATER_S)
            else:
                await self._outbox(self.outbox.give_up, event["handoff_id"], f"{type(exc).__name__}: {why}")

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the queued and in-flight handoffs to go. The ones
        that did not stay in the outbox for the next start (or another replica): logged, by
        answer id, and (without an outbox) lost."""
        if not self._tasks:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*self._writes, return_exceptions=True)
                await self._queue.join()
        except TimeoutError:
            left = list(self._sending.values()) + list(self._queue._queue)  # type: ignore[attr-defined]
            kept = "kept in the outbox for the next start" if self.outbox is not None else "lost"
            log.warning(
                "handoff webhook: %d handoffs not sent at shutdown, %s (answers %s)",
                len(left), kept, ", ".join(str(e.get("answer_id")) for e in left[:50]),
            )  # fmt: skip
            if self.outbox is not None:
                if self._follower is not None:  # or it could claim them back for this process
                    self._follower.cancel()
                    await asyncio.gather(self._follower, return_exceptions=True)
                for event in left:  # the next start takes them up at once, not after the lease
                    await self._outbox(self.outbox.release, event["handoff_id"])

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await self.drain(timeout_s)
        tasks = [*self._sending, *self._tasks, *self._writes]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
