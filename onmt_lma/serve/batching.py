"""Concurrent requests' sentences gathered into engine batches, fairly and within a bound.

Each request's sentences wait in a queue of their own; one worker per model fills a batch by taking one
sentence from each waiting request in turn (round robin, oldest request first), up to ``max_batch``, and,
while the batch is short, waits ``wait_s`` for more.  So a one-sentence request waits for at most one batch
however many large requests are queued before it.  The engine translates a batch in a thread of its own
while new sentences queue up, so that under load it works on full batches back to back.

The queue holds at most ``max_queued`` sentences: a request that would go past it is refused at once
(:class:`QueueFull`, with how many seconds the queued work needs at the measured speed: the server's 503
and ``Retry-After``), so that the work a server accepts can be finished within its timeouts.  A sentence
whose request gave up (its timeout passed) is dropped before it is translated.  When the engine fails on a
batch, its sentences are translated again one by one, so that only the requests whose sentences make it
fail get the error.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import math
import time


class QueueFull(Exception):
    """The model's queue cannot take the request now; ``retry_after``: seconds until it likely can."""

    def __init__(self, queued, limit, retry_after):
        super().__init__(f"the server is at capacity ({queued} sentences queued, at most {limit}); retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


@dataclasses.dataclass
class _Item:
    tokens: str
    future: asyncio.Future


class Batcher:
    """One model's fair, bounded queue and its worker (start and stop inside the running event loop)."""

    def __init__(self, engine, max_batch=32, wait_s=0.005, max_queued=1024):
        self.engine, self.max_batch, self.wait_s, self.max_queued = engine, max_batch, wait_s, max_queued
        self.requests = collections.deque()  # each waiting request's deque of items, oldest first
        self.queued = 0  # sentences waiting, over every request
        self.arrived = None  # set when sentences arrive
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.task = None
        self.batches = self.sentences = 0  # how many batches the engine ran, holding how many sentences
        self.speed = None  # sentences per second of the engine, a running mean over batches

    def start(self):
        self.arrived = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    def retry_after(self):
        """Whole seconds the queued sentences need at the measured speed (at least 1)."""
        return max(1, math.ceil(self.queued / self.speed)) if self.speed else 1

    def admit(self, count):
        """:class:`QueueFull` unless the queue can take ``count`` more sentences now."""
        if self.queued + count > self.max_queued:
            raise QueueFull(self.queued, self.max_queued, self.retry_after())

    async def translate(self, token_lines, timeout=None):
        """Each line's n_best ``(score, tokens)``, in order; :class:`asyncio.TimeoutError` after ``timeout`` s;
        :class:`QueueFull` at once when the queue cannot take them."""
        self.admit(len(token_lines))
        loop = asyncio.get_running_loop()
        items = [_Item(tokens, loop.create_future()) for tokens in token_lines]
        self.requests.append(collections.deque(items))
        self.queued += len(items)
        self.arrived.set()
        gathered = asyncio.gather(*(item.future for item in items))
        try:
            return await asyncio.wait_for(gathered, timeout)
        except BaseException:
            for item in items:  # given up: the worker skips them
                item.future.cancel()
            raise

    def _take(self, batch):
        """Move sentences into ``batch``, one per waiting request in turn, until it is full or none wait."""
        while len(batch) < self.max_batch and self.requests:
            waiting = self.requests.popleft()
            item = waiting.popleft()
            self.queued -= 1
            if not item.future.done():
                batch.append(item)
            if waiting:
                self.requests.append(waiting)
        if not self.requests:
            self.arrived.clear()

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            batch = []
            self._take(batch)
            deadline = loop.time() + self.wait_s
            while batch and len(batch) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(self.arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                self._take(batch)
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop, batch):
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self.executor, self.engine.translate, [i.tokens for i in batch])
        except Exception as error:  # some sentence makes the engine fail: find which, alone
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(error)
                return
            for item in batch:
                await self._run(loop, [item])
            return
        self.batches += 1
        self.sentences += len(batch)
        speed = len(batch) / max(time.perf_counter() - started, 1e-6)
        self.speed = speed if self.speed is None else 0.8 * self.speed + 0.2 * speed
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)
