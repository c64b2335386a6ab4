"""``onmt_lma_server``: translation over HTTP, in OpenNMT-py's ``onmt_server`` request and response shape.

    onmt_lma_server -model MODEL [-corpus DIR] [-port 5000] [-beam_size 5] ...
    onmt_lma_server -config conf.json [-port 5000] ...

MODEL is a checkpoint (any activation, int8 too), an ``onmt_lma_export`` folder (this package's ONNX
Runtime engine) or a CTranslate2 model folder; ``-config`` takes OpenNMT-py's ``conf.json`` model list
(:mod:`onmt_lma.serve.config`); any other ``-config`` is the YAML every ``onmt_lma_*`` command reads.  Requests carry raw text: the prepared corpus's tokenization and
subwords are applied and undone (``-corpus``, default: the corpus the checkpoint was trained with).
Concurrent requests are batched for the engine (``-max_batch_size``, ``-batch_wait_ms``); every request
has a timeout and size caps, each model's queue a bound (503 with Retry-After past it) and fair turns
between requests; it listens on 127.0.0.1 unless ``-ip`` says otherwise, and with ``-api_key_file`` it
needs a bearer key; Ctrl-C or SIGTERM finishes the requests in flight, then exits.

    curl -s localhost:5000/translator/translate -d '[{"src": "Ein Mann fährt Fahrrad."}]'
"""

import logging
import sys
from pathlib import Path

import uvicorn

from onmt_lma.base.errors import user_errors_exit
from onmt_lma.base.opts import float_type, int_type
from onmt_lma.bin.light import LightParser, init_logger
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.decoding import add_options as add_decoding_options
from onmt_lma.serve.app import Limits, load_models, make_app
from onmt_lma.serve.config import ModelSpec, ServerConfigError, load_conf
from onmt_lma.serve.connections import header_timeout_protocol
from onmt_lma.serve.engines import ENGINES

positive = int_type("an integer >= 1", lambda n: n >= 1)


def get_parser():
    parser = LightParser(prog="onmt_lma_server", description=__doc__.split("\n\n")[0])
    models = parser.add_argument_group("Models (onmt-lma)")
    models.add("--model", "-model", help="one model: a checkpoint, an onmt_lma_export folder or a CTranslate2 folder")
    models.add("--models_conf", "-models_conf", help="OpenNMT-py's conf.json: the models to serve (instead of "
               "-model); -config FILE.json means this, as in onmt_server")
    models.add("--corpus", "-corpus", help="prepared corpus whose steps apply to the text (default: the checkpoint's)")
    models.add("--engine", "-engine", choices=ENGINES, help="default: from what -model holds")
    models.add("--int8", "-int8", action="store_true", help="int8: an export's int8 graphs, int8 linear layers "
               "of a checkpoint, CTranslate2's int8 compute type")
    decoding = parser.add_argument_group("Decoding (defaults of every model; conf.json's opt overrides them)")
    add_decoding_options(decoding)
    decoding.add("--threads", "-threads", type=int_type("an integer >= 0", lambda n: n >= 0), default=0,
                 help="the engine's intra-op threads (0: its default)")
    serving = parser.add_argument_group("Serving")
    serving.add("--ip", "-ip", default="127.0.0.1",
                help="address to listen on (default: this machine only; -ip 0.0.0.0 exposes it to the network)")
    serving.add("--api_key", "-api_key", default=None,
                help="require 'Authorization: Bearer KEY' on every request but health (prefer -api_key_file: a "
                     "command line is visible to other users)")
    serving.add("--api_key_file", "-api_key_file", default=None, help="a file whose first line is the key")
    serving.add("--port", "-port", type=int_type("a port from 1 to 65535", lambda n: 0 < n < 65536), default=5000)
    serving.add("--url_root", "-url_root", default="/translator")
    serving.add("--max_batch_size", "-max_batch_size", type=positive, default=32,
                help="sentences of concurrent requests translated in one engine batch")
    serving.add("--batch_wait_ms", "-batch_wait_ms", type=float_type("a number >= 0", lambda n: n >= 0), default=5.0,
                help="how long a short batch waits for more sentences")
    serving.add("--request_timeout", "-request_timeout", type=float_type("a number > 0", lambda n: n > 0),
                default=60.0, help="seconds a request may wait for its translations (then 504)")
    serving.add("--max_src_tokens", "-max_src_tokens", type=positive, default=200,
                help="tokens a sentence may have after the corpus's steps (more: 413)")
    serving.add("--max_request_bytes", "-max_request_bytes", type=positive, default=1 << 20)
    serving.add("--max_request_sentences", "-max_request_sentences", type=positive, default=256)
    serving.add("--max_queued_sentences", "-max_queued_sentences", type=positive, default=1024,
                help="sentences a model's queue holds; a request past it gets 503 with Retry-After")
    serving.add("--read_timeout", "-read_timeout", type=float_type("a number > 0", lambda n: n > 0), default=30.0,
                help="seconds a client has to send a request's body (then 408)")
    serving.add("--header_timeout", "-header_timeout", type=float_type("a number > 0", lambda n: n > 0),
                default=10.0, help="seconds a connection has to send a request's headers (then it is closed)")
    serving.add("--log_file", "-log_file", default="", help="also log to this file")
    return parser


def conf_json_as_models_conf(args):
    """``-config conf.json`` is onmt_server's model list (``-models_conf``); ``-config`` YAML stays the YAML."""
    args = list(args)
    for i, arg in enumerate(args[:-1]):
        if arg in ("-config", "--config") and args[i + 1].lower().endswith(".json"):
            args[i] = "-models_conf"
    return args


def model_specs(opt):
    defaults = ModelSpec(1, Path(opt.model or "."), Decoding.from_options(opt), Path(opt.corpus) if opt.corpus else None,
                         opt.engine, opt.int8, opt.threads)
    if bool(opt.model) == bool(opt.models_conf):
        raise ServerConfigError("give -model (one model) or -config conf.json (a model list), one of them")
    if opt.models_conf:
        if opt.corpus or opt.engine:
            raise ServerConfigError("-corpus and -engine go with -model; in conf.json give each model's own")
        return load_conf(opt.models_conf, defaults)
    return [defaults]


def api_key(opt):
    """The key of ``-api_key`` or ``-api_key_file`` (None: none asked)."""
    if opt.api_key and opt.api_key_file:
        raise ServerConfigError("give -api_key or -api_key_file, not both")
    if opt.api_key_file:
        try:
            lines = open(opt.api_key_file, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ServerConfigError(f"-api_key_file {opt.api_key_file}: cannot read it ({error})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ServerConfigError(f"-api_key_file {opt.api_key_file}: its first line is empty; write the key there")
        return key
    if opt.api_key is not None and not opt.api_key.strip():
        raise ServerConfigError("-api_key is empty")
    return opt.api_key.strip() if opt.api_key else None


def main(argv=None):
    parser = get_parser()
    opt = parser.parse_args(conf_json_as_models_conf(sys.argv[1:] if argv is None else argv))
    init_logger(opt.log_file)
    server_log = logging.getLogger("onmt_lma.server")
    with user_errors_exit(parser):
        limits = Limits(opt.max_batch_size, opt.batch_wait_ms / 1000, opt.request_timeout, opt.max_src_tokens,
                        opt.max_request_bytes, opt.max_request_sentences, opt.max_queued_sentences, opt.read_timeout,
                        api_key(opt))
        if opt.max_queued_sentences < opt.max_request_sentences:
            raise ServerConfigError(f"-max_queued_sentences {opt.max_queued_sentences} is below "
                                    f"-max_request_sentences {opt.max_request_sentences}: such requests could never "
                                    "be queued")
        served = load_models(model_specs(opt), limits)
    config = uvicorn.Config(make_app(served, limits, opt.url_root), host=opt.ip, port=opt.port, log_level="warning",
                            timeout_graceful_shutdown=max(5, int(opt.request_timeout)), access_log=False,
                            http=header_timeout_protocol(opt.header_timeout))
    server_log.info("serving on http://%s:%d%s%s", opt.ip, opt.port, "/" + opt.url_root.strip("/"),
                    ", key required" if limits.api_key else "")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
