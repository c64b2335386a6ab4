"""Batches of lines as OpenNMT-py 3.5.1 forms them (translation) and under a token budget.
"""


def token_budget_batches(items, budget, length):
    """Consecutive ``items`` while the longest ``length(item)`` times their number stays within ``budget``
    (at least one item a batch)."""
    batch, longest = [], 0
    for item in items:
        size = length(item)
        if batch and max(longest, size) * (len(batch) + 1) > budget:
            yield batch
            batch, longest = [], 0
        batch.append(item)
        longest = max(longest, size)
    if batch:
        yield batch


INFERENCE_BUCKET = 16384  # OpenNMT-py 3.5.1 sorts this many source lines by length before batching them


def batches(lines, batch_size, batch_type="sents"):
    """Batches of line indices as OpenNMT-py 3.5.1 forms them for translation (``DynamicDatasetIter``, task
    INFER): buckets of 16,384 lines, each sorted by source length (stably), cut where the batch size
    (sentences, or sentences x longest source for ``tokens``) reaches ``batch_size``, an overflowing line
    starting the next batch.  The same batches give the same padded source lengths, hence the same
    ``max_length_ratio`` caps."""
    lengths = [len(line.split()) for line in lines]
    for start in range(0, len(lines), INFERENCE_BUCKET):
        batch, longest = [], 0
        for index in sorted(range(start, min(start + INFERENCE_BUCKET, len(lines))), key=lengths.__getitem__):
            batch.append(index)
            longest = max(longest, lengths[index])
            size = len(batch) * (longest if batch_type == "tokens" else 1)
            if size == batch_size:
                yield batch
                batch, longest = [], 0
            elif size > batch_size and len(batch) > 1:  # the last line overflows: it starts the next batch
                yield batch[:-1]
                batch = batch[-1:]
                longest = lengths[batch[0]]
        if batch:
            yield batch
