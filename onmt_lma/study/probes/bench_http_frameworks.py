"""Which HTTP server library ``onmt_lma_server`` is built on: the cost per request of each candidate.

    python -m onmt_lma.study.probes.bench_http_frameworks [--requests 4000] [--clients 1 64] [--out results/bench]

Each candidate serves, in a process of its own, ``POST /translator/translate`` answering OpenNMT-py's
shape with the source as its "translation" (no model: what is measured is the server library alone).
The same clients as ``bench_server`` (threads, one keep-alive HTTP/1.1 connection each) send one
sentence a request.  Candidates: Starlette on uvicorn (ASGI), aiohttp's own server (asyncio), and the
standard library's ``ThreadingHTTPServer`` (a thread per connection).  A candidate that is not installed
is reported as such.  Writes ``http_frameworks.md`` and ``.json`` in ``--out``.

The decision rule, fixed before the first run: take the asyncio candidate (batching concurrent requests
needs one event loop that sees them all) with the most requests/s at 64 clients, unless the threaded
standard library is more than 1.5x faster; a framework cost below 10% of a translated request's (about
5 ms at 64 clients, ``server.md``) makes the difference immaterial either way.  (Read after the first run:
the built server, on Starlette, stays when its extra cost over the fastest is under that 10%.)
"""

import argparse
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from onmt_lma.study.probes.bench_server import free_port, load

REPO = Path(__file__).resolve().parents[3]
CANDIDATES = {"starlette+uvicorn": ("starlette", "uvicorn"), "aiohttp": ("aiohttp",), "stdlib threaded": ()}


def answer(body):
    return json.dumps([[{"src": item["src"], "tgt": item["src"], "n_best": 1, "pred_score": 0.0}
                        for item in json.loads(body)]]).encode()


def serve(name, port):
    """Run candidate ``name`` on ``port`` until killed (in the child process)."""
    if name == "starlette+uvicorn":
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def translate(request):
            return Response(answer(await request.body()), media_type="application/json")

        async def health(request):
            return Response(b'{"status": "ok"}', media_type="application/json")

        app = Starlette(routes=[Route("/translator/translate", translate, methods=["POST"]), Route("/health", health)])
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    elif name == "aiohttp":
        from aiohttp import web

        async def translate(request):
            return web.Response(body=answer(await request.read()), content_type="application/json")

        async def health(request):
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.add_routes([web.post("/translator/translate", translate), web.get("/health", health)])
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    else:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: without it 40 ms delayed ACKs

            def reply(self, data):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 (the standard library's name)
                self.reply(answer(self.rfile.read(int(self.headers["Content-Length"]))))

            def do_GET(self):  # noqa: N802
                self.reply(b'{"status": "ok"}')

            def log_message(self, *args):
                pass

        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def measure(name, sentences, clients):
    port = free_port()
    child = subprocess.Popen([sys.executable, "-m", "onmt_lma.study.probes.bench_http_frameworks", "--serve", name,
                              "--port", str(port)])
    try:
        for _ in range(100):
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        load(port, sentences[:200], 8)  # warm-up
        rows = []
        for count in clients:
            seconds, latencies = load(port, sentences, count)
            rows.append({"clients": count, "requests_per_s": len(latencies) / seconds,
                         "ms_per_request": 1000 * seconds / len(latencies)})
        return rows
    finally:
        child.kill()
        child.wait()


def verdict(result, server_json):
    """The rule's reading: the fastest candidate at 64 clients, and Starlette's extra cost a translated request."""
    at_64 = {name: row["ms_per_request"] for name, entry in result["candidates"].items()
             for row in entry.get("rows", []) if row["clients"] == 64}
    if not at_64 or "starlette+uvicorn" not in at_64:
        return "No reading: the rule needs starlette+uvicorn measured at 64 clients."
    fastest = min(at_64, key=at_64.get)
    extra = at_64["starlette+uvicorn"] - at_64[fastest]
    if not server_json.is_file():
        return f"Fastest at 64 clients: {fastest}; Starlette costs {extra:.2f} ms a request more (no server.json)."
    served = next(r for r in json.loads(server_json.read_text())["rows"] if r["clients"] == 64)
    translated_ms = 1000 / served["requests_per_s"]
    share = extra / translated_ms
    return (f"Reading: the fastest at 64 clients is {fastest}; Starlette on uvicorn costs {extra:.2f} ms a request "
            "more, "
            f"{100 * share:.1f}% of a translated request ({translated_ms:.1f} ms at 64 clients, server.md): "
            + ("under the rule's 10%, immaterial: onmt_lma_server stays on Starlette." if share < 0.1 else
               f"over the rule's 10%: move onmt_lma_server to {fastest}."))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    parser.add_argument("--serve", choices=CANDIDATES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port)
    sentences = [f"Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt, Satz {i}." for i in range(args.requests)]
    result = {"requests": args.requests, "cpu_count": os.cpu_count(), "candidates": {}}
    for name, modules in CANDIDATES.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            result["candidates"][name] = {"not installed": missing}
        else:
            versions = {m: importlib.import_module(m).__version__ for m in modules}
            result["candidates"][name] = {"versions": versions, "rows": measure(name, sentences, args.clients)}
        print(name, json.dumps(result["candidates"][name]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http_frameworks.json").write_text(json.dumps(result, indent=1) + "\n")
    head = " | ".join(f"{n} clients: requests/s | ms a request" for n in args.clients)
    lines = ["# HTTP server libraries for onmt_lma_server", "",
             f"`python -m onmt_lma.study.runs study studies/bench.yaml --step http_frameworks`: {args.requests} "
             f"requests of one sentence, echoed in OpenNMT-py's response shape (no model), {os.cpu_count()} cores "
             "shared by server and clients. Rule (module docstring): the fastest asyncio candidate at 64 clients "
             "unless the threaded standard library is > 1.5x faster.", "",
             f"| candidate | versions | {head} |", "| --- | --- |" + " --- | --- |" * len(args.clients)]
    for name, entry in result["candidates"].items():
        if "rows" not in entry:
            missing = ", ".join(entry["not installed"])
            lines.append(f"| {name} | not installed: {missing} |" + " |" * 2 * len(args.clients))
            continue
        cells = " | ".join(f"{r['requests_per_s']:.0f} | {r['ms_per_request']:.2f}" for r in entry["rows"])
        lines.append(f"| {name} | {', '.join(f'{m} {v}' for m, v in entry['versions'].items())} | {cells} |")
    lines += ["", verdict(result, args.out / "server.json")]
    (args.out / "http_frameworks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
