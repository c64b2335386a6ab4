"""Concurrent requests' sentences gathered into engine batches.

Every sentence of every request goes into one queue per model; one worker takes the first waiting
sentence, everything queued behind it (up to ``max_batch``), and, while the batch is short, whatever
arrives within ``wait_s``; the engine translates the batch in a thread of its own while new sentences
queue up, so that under load the engine works on full batches back to back.  A sentence whose request
gave up (its timeout passed) is dropped before it is translated.
"""

import asyncio
import concurrent.futures
import dataclasses


@dataclasses.dataclass
class _Item:
    tokens: str
    future: asyncio.Future


class Batcher:
    """One model's queue and worker (start and stop inside the running event loop)."""

    def __init__(self, engine, max_batch=32, wait_s=0.005):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.queue = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.task = None
        self.batches = self.sentences = 0  # how many batches the engine ran, holding how many sentences

    def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def translate(self, token_lines, timeout=None):
        """Each line's n_best ``(score, tokens)``, in order; :class:`asyncio.TimeoutError` after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        items = [_Item(tokens, loop.create_future()) for tokens in token_lines]
        for item in items:
            self.queue.put_nowait(item)
        gathered = asyncio.gather(*(item.future for item in items))
        try:
            return await asyncio.wait_for(gathered, timeout)
        except BaseException:
            for item in items:  # given up: the worker skips them
                item.future.cancel()
            raise

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch and (remaining := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.engine.translate,
                                                     [item.tokens for item in batch])
            except Exception as error:  # the engine's failure is each waiting request's error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            self.batches += 1
            self.sentences += len(batch)
            for item, result in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(result)
