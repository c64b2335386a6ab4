"""The HTTP application of ``onmt_lma_server`` (Starlette, an ASGI framework, run by uvicorn).

OpenNMT-py's ``onmt_server`` shape under ``URL_ROOT`` (default ``/translator``):

* ``POST URL_ROOT/translate`` with ``[{"src": "raw text", "id": MODEL_ID}, ...]`` answers
  ``[[{"src": ..., "tgt": ..., "n_best": N, "pred_score": S}, ...]]``: one list per n-best rank, each
  aligned with the request (an empty ``src`` gets an empty ``tgt``); ``id`` may be left out when the
  server holds one model;
* ``GET URL_ROOT/models``: the models, their engines, corpora and decoding options;
* ``GET URL_ROOT/health`` (and ``/health``): ``{"status": "ok"}``.

A request that cannot be served gets ``{"error": message, "status": "error"}`` with a 4xx status (bad or
too deeply nested JSON, a missing or non-string ``src``, text the corpus's steps cannot take such as a lone
surrogate, an unknown ``id``: 400; no or a wrong key where the server has one: 401; a body not sent within
the read timeout: 408; too large a body, too many sentences, a sentence over the token cap: 413), 503 with
``Retry-After`` when the queue is full (:mod:`onmt_lma.serve.batching`), or 504 when its timeout passes.
A 500 (the engine failed on one of its sentences) says only that; the log has the details.  Nothing a
request sends stops the server or another request.  With a key (``-api_key`` / ``-api_key_file``) every
route but ``health`` needs ``Authorization: Bearer KEY``.  Every request is logged with its status,
sentences and time; a client that goes away is one log line.
"""

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import json
import logging
import time

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import Route

from onmt_lma.deploy.text import TextSteps, text_steps
from onmt_lma.serve.batching import Batcher, QueueFull
from onmt_lma.serve.engines import engine_of, load_engine

logger = logging.getLogger("onmt_lma.server")


@dataclasses.dataclass
class Limits:
    max_batch: int = 32  # sentences an engine batch holds
    wait_s: float = 0.005  # how long a short batch waits for more sentences
    timeout_s: float = 60.0  # a request's time from arrival to its answer
    max_src_tokens: int = 200  # a sentence's tokens after the corpus's steps
    max_request_bytes: int = 1 << 20
    max_request_sentences: int = 256
    max_queued: int = 1024  # sentences waiting for a model's engine, over every request (more: 503)
    read_timeout_s: float = 30.0  # a request's time to send its whole body (then 408)
    api_key: str = None  # None: no key asked


class RequestError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers


@dataclasses.dataclass
class ServedModel:
    spec: object
    engine: object
    steps: TextSteps
    batcher: Batcher

    def describe(self):
        """What ``/models`` tells a client: names, never this machine's paths."""
        return {"model_id": self.spec.model_id, "model": self.spec.path.name, "engine": self.engine.kind,
                "int8": self.spec.int8, "corpus": self.steps.corpus, "loaded": True,
                "opt": self.spec.decoding.as_dict()}


def load_models(specs, limits):
    """Every model of ``specs`` loaded, with its corpus's steps (refusing a model without a prepared corpus)."""
    served = {}
    for spec in specs:
        engine_of(spec.path)  # a missing or unknown model is refused first
        steps = text_steps(spec.path, spec.corpus)
        engine = load_engine(spec.path, spec.decoding, spec.engine, spec.int8, limits.max_batch, spec.threads)
        served[str(spec.model_id)] = ServedModel(spec, engine, steps, Batcher(engine, limits.max_batch, limits.wait_s,
                                                                               limits.max_queued))
        logger.info("model %s: %s (%s engine, corpus %s, beam %d)", spec.model_id, spec.path, engine.kind,
                    steps.origin, spec.decoding.beam_size)
    return served


def error(status, message, headers=None):
    return JSONResponse({"error": message, "status": "error"}, status_code=status, headers=headers)


def check_key(request, key):
    """:class:`RequestError` 401 unless the request carries ``Authorization: Bearer KEY`` (``key`` None: open)."""
    if key is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise RequestError(401, "this server needs a key: send the header 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})


async def read_body(request, limit, timeout):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {declared} bytes; this server takes at most {limit}")

    async def chunks():
        read, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body over {limit} bytes; this server takes at most {limit}")
            read.append(chunk)
        return b"".join(read)

    try:
        return await asyncio.wait_for(chunks(), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body was not received within {timeout:g} s") from None


def parse_inputs(body, models, limits):
    """``[(src, ServedModel)]`` of a request body, or :class:`RequestError` naming what is wrong."""
    try:
        inputs = json.loads(body)
    except (ValueError, UnicodeDecodeError) as problem:
        raise RequestError(400, f"the request body is not JSON: {problem}") from None
    except RecursionError:
        raise RequestError(400, "the request body nests JSON too deeply; expected a list of objects") from None
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
        try:
            item["src"].encode("utf-8")
        except UnicodeEncodeError as problem:
            raise RequestError(400, f"item {number}: src is not Unicode text: {problem.object[problem.start]!r} at "
                               f"position {problem.start} is a lone surrogate") from None
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
    try:  # refused before the text steps spend time on a request the queue cannot take
        counts = collections.Counter(id(model.batcher) for src, model in parsed if src.strip())
        for batcher in {id(model.batcher): model.batcher for _, model in parsed}.values():
            batcher.admit(counts[id(batcher)])
    except QueueFull as full:
        raise RequestError(503, str(full), {"Retry-After": str(full.retry_after)}) from None
    for index, (src, model) in enumerate(parsed):
        if src.strip():
            try:
                tokens = model.steps.encode(src)
            except Exception as problem:  # sacremoses, SentencePiece: whatever they cannot take is this item's
                raise RequestError(400, f"item {index}: the corpus's text steps cannot take this sentence "
                                   f"({type(problem).__name__})") from None
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
    except QueueFull as full:
        raise RequestError(503, str(full), {"Retry-After": str(full.retry_after)}) from None
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
        client = request.client.host if request.client else "-"
        try:
            check_key(request, limits.api_key)
            parsed = parse_inputs(await read_body(request, limits.max_request_bytes, limits.read_timeout_s), served,
                                  limits)
            sentences = len(parsed)
            response = JSONResponse(await translate_inputs(parsed, limits))
        except RequestError as problem:
            status, response = problem.status, error(problem.status, str(problem), problem.headers)
        except ClientDisconnect:
            logger.info("%s POST %s/translate: the client went away before sending its request", client, url_root)
            return error(499, "client disconnected")
        except Exception:  # an engine's failure on this request's sentences: its error, the server goes on
            logger.exception("translation failed")
            status, response = 500, error(500, "translation failed on a sentence of this request; the server log "
                                          "has the details")
        logger.info("%s POST %s/translate %d: %d sentences, %.1f ms", client, url_root, status, sentences,
                    1000 * (time.perf_counter() - started))
        return response

    async def models(request):
        try:
            check_key(request, limits.api_key)
        except RequestError as problem:
            return error(problem.status, str(problem), problem.headers)
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
