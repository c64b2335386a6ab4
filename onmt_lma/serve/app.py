"""The HTTP application of ``onmt_lma_server`` (Starlette, an ASGI framework, run by uvicorn).

OpenNMT-py's ``onmt_server`` shape under ``URL_ROOT`` (default ``/translator``):

* ``POST URL_ROOT/translate`` with ``[{"src": "raw text", "id": MODEL_ID}, ...]`` answers
  ``[[{"src": ..., "tgt": ..., "n_best": N, "pred_score": S}, ...]]``: one list per n-best rank, each
  aligned with the request (an empty ``src`` gets an empty ``tgt``); ``id`` may be left out when the
  server holds one model;
* ``GET URL_ROOT/models``: the models, their engines, corpora and decoding options;
* ``GET URL_ROOT/health`` (and ``/health``): ``{"status": "ok"}``.

A request that cannot be served gets ``{"error": message, "status": "error"}`` with a 4xx status (bad
JSON, a missing or non-string ``src``, an unknown ``id``: 400; too large a body, too many sentences, a
sentence over the token cap: 413) or 504 when its timeout passes; nothing a request sends stops the
server or another request.  Every request is logged with its status, sentences and time.
"""

import asyncio
import contextlib
import dataclasses
import json
import logging
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from onmt_lma.serve.batching import Batcher
from onmt_lma.serve.engines import load_engine
from onmt_lma.serve.text import CorpusSteps

logger = logging.getLogger("onmt_lma.server")


@dataclasses.dataclass
class Limits:
    max_batch: int = 32  # sentences an engine batch holds
    wait_s: float = 0.005  # how long a short batch waits for more sentences
    timeout_s: float = 60.0  # a request's time from arrival to its answer
    max_src_tokens: int = 200  # a sentence's tokens after the corpus's steps
    max_request_bytes: int = 1 << 20
    max_request_sentences: int = 256


class RequestError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class ServedModel:
    spec: object
    engine: object
    steps: CorpusSteps
    batcher: Batcher

    def describe(self):
        return {"model_id": self.spec.model_id, "model": str(self.spec.path), "engine": self.engine.kind,
                "int8": self.spec.int8, "corpus": str(self.steps.corpus_dir), "loaded": True,
                "opt": dataclasses.asdict(self.spec.decoding)}


def load_models(specs, limits):
    """Every model of ``specs`` loaded, with its corpus's steps (refusing a model without a prepared corpus)."""
    from onmt_lma.evaluation.test_sets import checkpoint_corpus
    from onmt_lma.serve.engines import ModelLoadError, engine_of

    served = {}
    for spec in specs:
        found = engine_of(spec.path)  # a missing or unknown model is refused first
        corpus = spec.corpus or (checkpoint_corpus(spec.path) if found != "ct2" else None)
        if corpus is None:
            raise ModelLoadError(f"model {spec.path}: which prepared corpus's steps apply to its text? give -corpus DIR "
                                 "(or \"corpus\" in conf.json)")
        steps = CorpusSteps(corpus)
        engine = load_engine(spec.path, spec.decoding, spec.engine, spec.int8, limits.max_batch)
        served[str(spec.model_id)] = ServedModel(spec, engine, steps, Batcher(engine, limits.max_batch, limits.wait_s))
        logger.info("model %s: %s (%s engine, corpus %s, beam %d)", spec.model_id, spec.path, engine.kind,
                    steps.corpus_dir, spec.decoding.beam_size)
    return served


def error(status, message):
    return JSONResponse({"error": message, "status": "error"}, status_code=status)


async def read_body(request, limit):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes; this server takes at most {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_inputs(body, models, limits):
    """``[(src, ServedModel)]`` of a request body, or :class:`RequestError` naming what is wrong."""
    try:
        inputs = json.loads(body)
    except (ValueError, UnicodeDecodeError) as problem:
        raise RequestError(400, f"the request body is not JSON: {problem}") from None
    if not isinstance(inputs, list):
        raise RequestError(400, 'expected a JSON list of {"src": "text", "id": model id}, got '
                           f"{type(inputs).__name__}")
    if len(inputs) > limits.max_request_sentences:
        raise RequestError(413, f"{len(inputs)} sentences in one request; this server takes at most "
                           f"{limits.max_request_sentences}")
    parsed = []
    for number, item in enumerate(inputs):
        if not isinstance(item, dict) or "src" not in item:
            raise RequestError(400, f'item {number}: expected {{"src": "text", "id": model id}}, got {item!r:.80}')
        if not isinstance(item["src"], str):
            raise RequestError(400, f"item {number}: src must be a string, got {type(item['src']).__name__}")
        if "id" in item:
            model = models.get(str(item["id"]))
            if model is None:
                raise RequestError(400, f"item {number}: no model with id {item['id']!r} (this server holds "
                                   f"{', '.join(models)})")
        elif len(models) == 1:
            model = next(iter(models.values()))
        else:
            raise RequestError(400, f"item {number}: id missing; this server holds the models {', '.join(models)}")
        parsed.append((item["src"], model))
    if len({model.spec.decoding.n_best for _, model in parsed}) > 1:
        raise RequestError(400, "the request mixes models with different n_best; send them apart")
    return parsed


async def translate_inputs(parsed, limits):
    """The OpenNMT-py response: one list per n-best rank, aligned with ``parsed``."""
    n_best = parsed[0][1].spec.decoding.n_best if parsed else 1
    tgt = [[("", 0.0)] * n_best for _ in parsed]
    by_model = {}
    for index, (src, model) in enumerate(parsed):
        if src.strip():
            tokens = model.steps.encode(src)
            count = len(tokens.split())
            if count > limits.max_src_tokens:
                raise RequestError(413, f"item {index}: {count} tokens after the corpus's steps; this server takes "
                                   f"at most {limits.max_src_tokens} a sentence")
            by_model.setdefault(id(model), (model, []))[1].append((index, tokens))
    jobs = [(model, lines, model.batcher.translate([t for _, t in lines], limits.timeout_s))
            for model, lines in by_model.values()]
    try:
        answers = await asyncio.gather(*(job for _, _, job in jobs))
    except asyncio.TimeoutError:
        raise RequestError(504, f"no answer within the request timeout of {limits.timeout_s:g} s") from None
    for (model, lines, _), found in zip(jobs, answers):
        for (index, _), hypotheses in zip(lines, found):
            tgt[index] = [(model.steps.decode(text), score) for score, text in hypotheses]
    return [[{"src": src, "tgt": tgt[i][rank][0], "n_best": n_best, "pred_score": tgt[i][rank][1]}
             for i, (src, _) in enumerate(parsed)] for rank in range(n_best)]


def make_app(served, limits, url_root="/translator"):
    """The Starlette application over the loaded models ``served`` (``{str(id): ServedModel}``)."""
    url_root = "/" + url_root.strip("/") if url_root.strip("/") else ""

    async def translate(request):
        started, sentences, status = time.perf_counter(), 0, 200
        try:
            parsed = parse_inputs(await read_body(request, limits.max_request_bytes), served, limits)
            sentences = len(parsed)
            response = JSONResponse(await translate_inputs(parsed, limits))
        except RequestError as problem:
            status, response = problem.status, error(problem.status, str(problem))
        except Exception as problem:  # an engine's failure: this request's error, the server goes on
            logger.exception("translation failed")
            status, response = 500, error(500, f"translation failed: {type(problem).__name__}: {problem}")
        logger.info("%s POST %s/translate %d: %d sentences, %.1f ms", request.client.host if request.client else "-",
                    url_root, status, sentences, 1000 * (time.perf_counter() - started))
        return response

    async def models(request):
        return JSONResponse([model.describe() for model in served.values()])

    async def health(request):
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for model in served.values():
            model.batcher.start()
        logger.info("ready: %d model(s) under %s", len(served), url_root or "/")
        yield
        for model in served.values():
            await model.batcher.stop()
            model.engine.close()
        logger.info("stopped")

    routes = [Route(f"{url_root}/translate", translate, methods=["POST"]),
              Route(f"{url_root}/models", models, methods=["GET"]),
              Route(f"{url_root}/health", health, methods=["GET"])]
    if url_root:
        routes.append(Route("/health", health, methods=["GET"]))
    return Starlette(routes=routes, lifespan=lifespan)
