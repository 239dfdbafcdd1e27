"""Handoff: telling a help desk that a conversation needs a person.

An answer that abstains, a quote the guard put in place of the model's answer, and a
thumbs-down each mark the conversation ``needs_human`` (the answer's field; on the OpenAI
face also the ``X-RAG-Needs-Human`` header). With ``RAG_HANDOFF_WEBHOOK_URL`` set, each also
POSTs ``{"event": "needs_human", "reason", "answer_id", "collection", "question", "answer",
"conversation"}`` there, from background tasks (four at once): retried with exponential
backoff (tenacity; at most 30 s apart, or a 429's Retry-After) on a connection error, a 429
or a 5xx for up to 5 minutes (a help desk's restart or deploy loses nothing), never holding
the answer up, and one handoff the help desk keeps refusing holds up no other. A queue of
10,000 waits while the webhook is away; past that the oldest are dropped, and each drop is
logged. The queue is in memory: what is still in it when the service stops is logged as not
sent, with the answers' ids.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

log = logging.getLogger("rag.serving")
QUEUE_LIMIT = 10_000


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


SENDERS = 4  # handoffs in flight at once: one the help desk keeps refusing holds up no other


def _wait(exponential: Any, max_wait_s: float) -> Any:
    """A 429's Retry-After (seconds) when it gives one, else exponential backoff."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        after = exc.response.headers.get("retry-after", "") if isinstance(exc, httpx.HTTPStatusError) else ""
        return min(max_wait_s, float(after)) if after.isdigit() else float(exponential(state))

    return wait


class Handoff:
    def __init__(self, url: str | None, give_up_s: float = 300.0, max_wait_s: float = 30.0) -> None:
        self.url = url
        self.give_up_s = give_up_s  # it took 8 s (6 attempts) to give up before: a restart lost them
        self.max_wait_s = max_wait_s
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._sending: dict[asyncio.Task[None], dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def notify(self, event: dict[str, Any]) -> None:
        """Queue one handoff for the webhook (returns at once; nothing without a URL)."""
        if not self.url:
            return
        if self._task is None:
            self._client = httpx.AsyncClient(timeout=10.0)
            self._task = asyncio.get_running_loop().create_task(self._deliver())
        if self._queue.full():
            dropped = self._queue.get_nowait()
            self._queue.task_done()  # or drain() would wait for it at every shutdown
            log.error("handoff webhook queue full: dropped the handoff of answer %s", dropped.get("answer_id"))
        self._queue.put_nowait({"event": "needs_human", **event})

    async def _deliver(self) -> None:
        slots = asyncio.Semaphore(SENDERS)
        while True:
            event = await self._queue.get()
            await slots.acquire()
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
            self.sent += 1
        except Exception as exc:  # given up on this one (a 4xx, or past give_up_s); the others still go
            self.failed += 1
            log.error("handoff webhook %s failed for answer %s: %s", self.url, event.get("answer_id"), exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the queued and in-flight handoffs to go; log the
        ones that did not, by answer id (the queue is in memory)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                left = list(self._sending.values()) + list(self._queue._queue)  # type: ignore[attr-defined]
                log.warning(
                    "handoff webhook: %d handoffs not sent at shutdown (answers %s)",
                    len(left), ", ".join(str(e.get("answer_id")) for e in left[:50]),
                )  # fmt: skip

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await self.drain(timeout_s)
        tasks = [*self._sending, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
