"""OpenNMT-py 3.5.1's beam search (``onmt/translate/beam_search.py``) in NumPy: the reference the export engines
follow.  The ONNX engine runs it; ``csrc/search.h`` is the same search in C++, held to this one step by step
by ``tests/test_search.py``.

The first beam starts alone (the others at -inf); each step a hypothesis offers its ``beam_size`` best tokens
(ranked by log-probability, then id; a banned token scores :data:`BANNED`); a candidate's score is the
hypothesis's plus the token's, divided by the length penalty of the new length plus one; the best
``beam_size`` of a sentence's candidates (score, then beam x vocabulary position) continue.  A hypothesis that
ends is kept with its penalized score and its beam closed (:data:`BANNED`); a sentence is done when its best
beam has ended and ``n_best`` hypotheses are kept, or at :meth:`Decoding.max_steps
<onmt_lma.deploy.decoding.Decoding.max_steps>` tokens.  The tokens a step forbids are the decoding value's (:meth:`Decoding.step_bans
<onmt_lma.deploy.decoding.Decoding.step_bans>` for every hypothesis, :meth:`~onmt_lma.deploy.decoding.Decoding.
hypothesis_bans` for each).
"""

import numpy as np

#: OpenNMT-py's score of a forbidden token and of a closed beam (handed to the C++ engine as it loads)
BANNED = -65504.0
#: where an export engine's time goes (seconds, summed over every call): the encoder, the decoder steps, the
#: beam search around them; ``steps``: decoder calls; ``sentences``: sentences translated
PROFILE_KEYS = ("encoder_s", "decoder_s", "search_s", "steps", "sentences")


def beam_search(steps, count, decoding, special, max_steps):
    """``decoding.n_best`` ``(score, token ids)`` per sentence, best first, the end token included where the
    hypothesis ended.

    ``steps`` is the model: ``steps.top_k(tokens, step, k, banned)`` feeds one token to each alive hypothesis
    (rows of ``beam_size`` per sentence) and returns each row's ``k`` best ``(log_probs, ids)`` (float32,
    ranked by value then id; ``banned`` ids at :data:`BANNED`); ``steps.keep(rows)`` carries its state over
    to the given rows of the last step, in that order.
    """
    beam = decoding.beam_size
    tokens = np.full(count * beam, special["bos"], dtype=np.int64)
    history = np.zeros((count * beam, 0), dtype=np.int64)
    beam_scores = np.tile(np.array([0.0] + [-np.inf] * (beam - 1), dtype=np.float32), count)
    offsets = np.arange(count)
    hypotheses, results = [[] for _ in range(count)], [None] * count
    for step in range(max_steps):
        length = step + 1
        values, ids = _top_k(steps, tokens, step, decoding, decoding.step_bans(length, special), history)
        penalty = np.float32(decoding.length_penalty(length + 1, decoding.alpha))
        candidates = values + beam_scores[:, None]
        if penalty != 1:
            candidates = candidates / penalty
        groups = len(offsets)
        scores = candidates.reshape(groups, beam * beam)
        positions = (ids + (np.arange(len(ids)) % beam * steps.vocab)[:, None]).reshape(groups, beam * beam)
        order = np.lexsort((positions, -scores), axis=1)[:, :beam]  # score desc, then position asc
        rows = np.arange(groups)[:, None]
        best, top_scores = positions[rows, order], scores[rows, order]
        beam_scores = (top_scores * penalty).reshape(-1)
        tokens = (best % steps.vocab).reshape(-1)
        parents = (best // steps.vocab + rows * beam).reshape(-1)
        history = np.concatenate([history[parents], tokens[:, None]], axis=1)
        finished = (tokens == special["eos"]).reshape(groups, beam)
        if length == max_steps:
            finished[:] = True
        going = []
        for i, sentence in enumerate(offsets):
            for j in np.flatnonzero(finished[i]):
                hypotheses[sentence].append((float(top_scores[i, j]), history[i * beam + j].tolist()))
                beam_scores[i * beam + j] = np.float32(BANNED)
            if finished[i, 0] and len(hypotheses[sentence]) >= decoding.n_best:
                ranked = sorted(hypotheses[sentence], key=lambda h: h[0], reverse=True)  # stable: first ended first
                results[sentence] = ranked[: decoding.n_best]
            else:
                going.append(i)
        if not going:
            break
        kept = (np.array(going)[:, None] * beam + np.arange(beam)).reshape(-1)
        steps.keep(parents[kept])
        offsets, beam_scores, tokens, history = offsets[going], beam_scores[kept], tokens[kept], history[kept]
    return results


def _top_k(steps, tokens, step, decoding, banned, history):
    """Each hypothesis's ``beam_size`` best tokens, ``banned`` (every row's) left out; those its own bans
    forbid asked for on top, then scored :data:`BANNED` and ranked again."""
    beam = decoding.beam_size
    repeats = [decoding.hypothesis_bans(row.tolist()) for row in history]
    extra = max(map(len, repeats), default=0)
    values, ids = steps.top_k(tokens, step, min(beam + extra, steps.vocab), banned)
    if not extra:
        return values, ids
    for row, repeated in enumerate(repeats):
        values[row, np.isin(ids[row], repeated)] = BANNED
    order = np.lexsort((ids, -values), axis=1)[:, :beam]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)
