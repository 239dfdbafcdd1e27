"""Handoff: telling a help desk that a conversation needs a person.

An answer that abstains, a quote the guard put in place of the model's answer, and a
thumbs-down each mark the conversation ``needs_human`` (the answer's field; on the OpenAI
face also the ``X-RAG-Needs-Human`` header). With ``RAG_HANDOFF_WEBHOOK_URL`` set, each also
POSTs ``{"event": "needs_human", "reason", "answer_id", "collection", "question", "answer",
"conversation"}`` there, from a background task: retried with exponential backoff (tenacity,
at most 30 s apart) on a connection error, a 429 or a 5xx for up to 5 minutes (a help desk's
restart or deploy loses nothing), never holding the answer up. The others wait in a queue of
10,000 meanwhile; past that the oldest are dropped, and each drop is logged. The queue is in
memory: what is still in it when the service stops is logged as not sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

log = logging.getLogger("rag.serving")
QUEUE_LIMIT = 10_000


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


class Handoff:
    def __init__(self, url: str | None, give_up_s: float = 300.0, max_wait_s: float = 30.0) -> None:
        self.url = url
        self.give_up_s = give_up_s  # it took 8 s (6 attempts) to give up before: a restart lost them
        self.max_wait_s = max_wait_s
        self.sent = 0
        self.failed = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
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
        assert self._client is not None and self.url is not None
        while True:
            event = await self._queue.get()
            try:
                async for attempt in AsyncRetrying(
                    stop=stop_after_delay(self.give_up_s),
                    wait=wait_exponential(multiplier=0.25, max=self.max_wait_s),
                    retry=retry_if_exception(_retryable),
                    reraise=True,
                ):
                    with attempt:
                        response = await self._client.post(self.url, json=event)
                        response.raise_for_status()
                self.sent += 1
            except Exception as exc:  # given up on this one; the next still goes
                self.failed += 1
                log.error("handoff webhook %s failed for answer %s: %s", self.url, event.get("answer_id"), exc)
            finally:
                self._queue.task_done()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) for the queued handoffs to go."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                log.warning("handoff webhook: %d handoffs not sent at shutdown", self._queue.qsize())

    async def aclose(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
