"""The native engines' beam search (csrc/search.h) held to the reference (onmt_lma/deploy/search.py) on tiny
random models of every activation, on both engines (the torch extension and the torch-free runtime): the
reference, driven by the engine's own decoder step, must make the same steps and end with the same hypotheses,
scores bit for bit; the runtime translates as the torch engine does, and the same on every instruction set;
the one decoding value reaches C++ whole."""

import dataclasses

import numpy as np
import pytest
import torch

from onmt_lma.deploy.decoding import Decoding, LengthPenalty
from onmt_lma.deploy.native import native_activations
from onmt_lma.deploy.native_runtime import runtime_decoding, runtime_module
from onmt_lma.deploy.search import BANNED, PROFILE_KEYS, beam_search
from onmt_lma.model import kernels

SPECIAL = {"bos": 2, "eos": 3, "unk": 0, "pad": 1, "src_pad": 1}
VOCAB, DIM, HEADS, UNITS, LAYERS = 37, 16, 2, 24, 2


MODULES = {"torch": kernels.engine_module, "runtime": runtime_module}


def random_engine(activation, seed, engine="torch"):
    """An engine on random weights of the native layout (deploy/native.py's docstring): peaked next-token
    distributions, the end token likely enough that hypotheses end at many lengths."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.3):
        return (torch.randn(shape, generator=generator) * scale).contiguous()

    weights = {"src_embeddings": randn(VOCAB, DIM), "tgt_embeddings": randn(VOCAB, DIM),
               "positions": randn(64, DIM, scale=0.1)}

    def norm(name):
        weights[f"{name}.weight"], weights[f"{name}.bias"] = 1 + randn(DIM, scale=0.1), randn(DIM, scale=0.1)

    def linear(name, outputs, inputs, scale=0.3):
        weights[f"{name}.weight"], weights[f"{name}.bias"] = randn(outputs, inputs, scale=scale), randn(outputs)

    def feed_forward(p):
        norm(f"{p}.norm")
        linear(f"{p}.w1", UNITS, DIM)
        linear(f"{p}.w2", DIM, UNITS)
        if activation == "lma":
            weights[f"{p}.mean"], weights[f"{p}.inv"] = randn(scale=0.1), torch.tensor(4 / 3)
            weights[f"{p}.slopes"], weights[f"{p}.intercepts"] = randn(8, scale=1.0), randn(8)
        elif activation in ("prelu", "swish"):
            weights[f"{p}.{'weight' if activation == 'prelu' else 'beta'}"] = randn(UNITS, scale=1.0)
        elif activation == "aplu":
            weights[f"{p}.hinge_slope"], weights[f"{p}.hinge_point"] = randn(2, UNITS, scale=1.0), randn(2, UNITS)

    for i in range(LAYERS):
        norm(f"encoder.{i}.norm")
        linear(f"encoder.{i}.qkv", 3 * DIM, DIM)
        linear(f"encoder.{i}.out", DIM, DIM)
        feed_forward(f"encoder.{i}.ffn")
        norm(f"decoder.{i}.norm1")
        norm(f"decoder.{i}.norm2")
        linear(f"decoder.{i}.qkv", 3 * DIM, DIM)
        for part in ("out", "context_query", "context_keys", "context_values", "context_out"):
            linear(f"decoder.{i}.{part}", DIM, DIM)
        feed_forward(f"decoder.{i}.ffn")
    norm("encoder.norm")
    norm("decoder.norm")
    linear("generator", VOCAB, DIM, scale=0.5)
    weights["generator.bias"][SPECIAL["eos"]] += 2.0
    config = {"dim": float(DIM), "heads": float(HEADS), "vocab": float(VOCAB), "eps": 1e-6, "banned_score": BANNED,
              **{key: float(SPECIAL[key]) for key in ("bos", "eos", "unk", "src_pad")}}
    if engine == "runtime":
        weights = {name: value.numpy() for name, value in weights.items()}
    return MODULES[engine]().Engine(weights, config, activation)


def decoding_of(engine, decoding):
    return runtime_decoding(MODULES[engine](), decoding)


class EngineSteps:
    """The reference search's model (deploy/search.py's protocol) on the engine's own step."""

    def __init__(self, engine, sources, beam, max_steps):
        self.engine, self.vocab, self.calls = engine, VOCAB, 0
        engine.begin(sources, beam, max_steps)

    def top_k(self, tokens, step, k, banned):
        self.calls += 1
        values, ids = self.engine.top_k(tokens.tolist(), step, k, list(banned))
        return np.array(values, dtype=np.float32).reshape(-1, k), np.array(ids, dtype=np.int64).reshape(-1, k)

    def keep(self, rows):
        self.engine.keep(rows.tolist())


def sources(seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, VOCAB, size=int(length)).tolist() for length in rng.integers(1, 9, size=5)]


DECODINGS = [
    Decoding(beam_size=1),
    Decoding(beam_size=4, n_best=4),
    Decoding(beam_size=5, n_best=3, min_length=4, ban_unk_token=True, length_penalty=LengthPenalty.WU, alpha=0.6),
    Decoding(beam_size=3, n_best=2, length_penalty=LengthPenalty.NONE),
    Decoding(beam_size=4, n_best=4, block_ngram_repeat=2),
    Decoding(beam_size=2, n_best=2, block_ngram_repeat=1, ban_unk_token=True),
]


def ngrams(ids, n):
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("activation", native_activations())
def test_the_engine_searches_as_the_reference_step_by_step(activation, kind):
    lengths, ended = set(), []
    for seed, decoding in enumerate(DECODINGS):
        engine, lines = random_engine(activation, seed, kind), sources(seed)
        max_steps = 12
        before = engine.profile()["steps"]
        found = engine.translate(lines, decoding_of(kind, decoding), max_steps)
        engine_steps = engine.profile()["steps"] - before
        steps = EngineSteps(engine, lines, decoding.beam_size, max_steps)
        expected = beam_search(steps, len(lines), decoding, SPECIAL, max_steps)
        assert steps.calls == engine_steps, (activation, decoding)
        assert found == [[(score, ids) for score, ids in hypotheses] for hypotheses in expected], (activation, decoding)
        lengths |= {len(ids) for hypotheses in found for _, ids in hypotheses}
        ended += [ids[-1] == SPECIAL["eos"] for hypotheses in found for _, ids in hypotheses]
        if decoding.min_length:
            assert all(len(ids) >= decoding.min_length for hypotheses in found for _, ids in hypotheses)
        if decoding.ban_unk_token:
            assert all(SPECIAL["unk"] not in ids for hypotheses in found for _, ids in hypotheses)
        if decoding.block_ngram_repeat:
            n = decoding.block_ngram_repeat
            assert all(len(set(ngrams(ids, n))) == len(ngrams(ids, n)) for hypotheses in found for _, ids in hypotheses)
    assert len(lengths) > 3 and any(ended) and not all(ended), "searches whose hypotheses are all alike test little"


def test_a_repetition_ban_changes_what_is_found():
    """Without the ban these random models repeat n-grams; with it, no hypothesis does (the test above), so the
    ban did something."""
    engine, lines = random_engine("relu", 4), sources(4)
    found = engine.translate(lines, decoding_of("torch", DECODINGS[4]), 12)
    unbanned = engine.translate(lines, decoding_of("torch", dataclasses.replace(DECODINGS[4], block_ngram_repeat=0)),
                                12)
    assert found != unbanned
    assert any(len(set(ngrams(ids, 2))) < len(ngrams(ids, 2)) for hypotheses in unbanned for _, ids in hypotheses)


def test_the_reference_would_catch_a_search_that_drifts():
    """A reference that scores one candidate differently no longer matches the engine: the test can fail."""
    engine, lines, decoding = random_engine("relu", 1), sources(1), DECODINGS[1]
    found = engine.translate(lines, decoding_of("torch", decoding), 12)

    class Drifting(EngineSteps):
        def top_k(self, tokens, step, k, banned):
            values, ids = super().top_k(tokens, step, k, banned)
            if step == 2:
                values[:, 0] -= 1.0
            return values, ids

    assert found != beam_search(Drifting(engine, lines, 4, 12), len(lines), decoding, SPECIAL, 12)


def test_the_decoding_value_reaches_the_engine_field_for_field():
    decoding = Decoding(beam_size=7, n_best=2, max_length=40, min_length=3, max_length_ratio=2.0,
                        length_penalty=LengthPenalty.WU, alpha=0.25, ban_unk_token=True, block_ngram_repeat=3)
    native = decoding_of("runtime", decoding)
    for field in dataclasses.fields(decoding):
        value = getattr(native, field.name)
        assert (value.name if field.type is LengthPenalty else value) == \
            (getattr(decoding, field.name).name if field.type is LengthPenalty else getattr(decoding, field.name))
    with pytest.raises(AttributeError):  # a field C++ lacks is an error, never dropped
        native.repetition_ban = 2


def test_the_engine_keeps_the_profile_keys_and_banned_score_handed_to_it():
    engine = random_engine("relu", 0)
    assert set(PROFILE_KEYS) <= set(engine.profile())
    engine.begin([[5, 6]], 2, 4)
    values, ids = engine.top_k([SPECIAL["bos"]] * 2, 0, VOCAB, [SPECIAL["eos"]])
    assert values[ids.index(SPECIAL["eos"])] == np.float32(BANNED)


@pytest.mark.parametrize("activation", native_activations())
def test_the_runtime_translates_and_scores_as_the_torch_engine(activation):
    for seed, decoding in enumerate(DECODINGS):
        lines, engines = sources(seed), {kind: random_engine(activation, seed, kind) for kind in MODULES}
        found = {kind: engine.translate(lines, decoding_of(kind, decoding), 12) for kind, engine in engines.items()}
        assert [[ids for _, ids in h] for h in found["runtime"]] == [[ids for _, ids in h] for h in found["torch"]]
        assert [s for h in found["runtime"] for s, _ in h] == pytest.approx([s for h in found["torch"] for s, _ in h],
                                                                           abs=1e-4)
        scores = {kind: engine.score(lines, sources(seed + 1)) for kind, engine in engines.items()}
        assert scores["runtime"][1] == scores["torch"][1]
        assert scores["runtime"][0] == pytest.approx(scores["torch"][0], rel=1e-5)


ISA_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from test_search import DECODINGS, decoding_of, native_activations, random_engine, sources
from onmt_lma.deploy.native_runtime import runtime_module
found = []
for activation in native_activations():
    for seed, decoding in enumerate(DECODINGS):
        engine = random_engine(activation, seed, "runtime")
        found += [engine.translate(sources(seed), decoding_of("runtime", decoding), 12), engine.score(sources(seed), sources(seed + 1))]
print(json.dumps([runtime_module().active_isa(), found]))
"""


def run_on_isa(isa):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "ONMT_LMA_FORCE_CPU_ISA": isa}
    result = subprocess.run([sys.executable, "-c", ISA_PROBE, str(Path(__file__).parent)], capture_output=True,
                            text=True, env=env, timeout=300)
    return result


def test_every_instruction_set_gives_the_same_translations_bit_for_bit():
    """The generic path (plain C++, what an ARM or old x86 CPU runs) and each path this CPU has: the same
    hypotheses and scores, float for float, on every activation and decoding above."""
    import json

    module = runtime_module()
    isas = ["GENERIC"] + (["AVX2"] if module.detected_isa() == "AVX2" else [])
    results = {}
    for isa in isas:
        result = run_on_isa(isa)
        assert result.returncode == 0, result.stderr[-2000:]
        active, found = json.loads(result.stdout.strip().splitlines()[-1])
        assert active == isa
        results[isa] = found
    assert all(results[isa] == results["GENERIC"] for isa in isas)


def test_a_bad_isa_is_a_clear_error():
    result = run_on_isa("SSE9")
    assert result.returncode != 0 and "ONMT_LMA_FORCE_CPU_ISA=SSE9: expected GENERIC or AVX2" in result.stderr
