"""``onmt_lma_server`` under load: real HTTP clients against the engine called directly in batches.

    python -m onmt_lma.study.probes.bench_server MODEL --corpus data/multi30k [--sentences N]
        [--clients 1 8 64] [--max-batch 32] [--out results/bench]

MODEL is what the server serves (an ``onmt_lma_export`` folder, a checkpoint, a CTranslate2 folder).  The
test sentences of the prepared corpus (all, or the first ``--sentences``), as raw text (its tokenized source
detokenized), are translated (beam 5):

* directly: the corpus's steps, then the engine on batches of ``--max-batch`` sentences, in this process;
* through the server (``onmt_lma_server``, its own process): N concurrent clients (threads, one HTTP/1.1
  keep-alive connection each), each sending one sentence a request until the sentences are used up.

Per N: requests/s, sentences/s, p50/p95 latency and the ratio to the direct batched throughput (goal:
>= 0.8x at 64 clients).  Then, against the same server with its default queue bound:

* a flood and a trickle: one client with ``--flood-requests`` requests of 256 sentences in flight at once
  (each retried after its ``Retry-After`` when answered 503), while another sends one sentence a request;
  goals: the small client's p95 latency under 2 s, every 503 with ``Retry-After``, no other 5xx;
* ``--crowd`` clients, each with its own connection, sending one sentence at the same moment; goal: every one
  answered (200, or 503 with ``Retry-After``).

On a 2-core machine the clients share the cores with the server.  Writes ``server.md`` and ``server.json``
in ``--out``.
"""

import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def portable(path):
    """``path`` relative to the repository, or its name alone (a result holds no absolute path)."""
    path = path.resolve()
    return os.path.relpath(path, REPO) if path.is_relative_to(REPO) else path.name


def raw_sources(corpus, count):
    from sacremoses import MosesDetokenizer

    detokenizer = MosesDetokenizer("de")
    lines = (Path(corpus) / "test.de").read_text(encoding="utf-8").splitlines()[: count or None]
    return [detokenizer.detokenize(line.split()) for line in lines]


def direct(model, corpus, sources, max_batch):
    """Sentences/s of the corpus's steps and the engine on batches of ``max_batch``, after one warm-up batch."""
    from onmt_lma.deploy.decoding import Decoding
    from onmt_lma.serve.engines import load_engine
    from onmt_lma.deploy.text import TextSteps

    steps, engine = TextSteps.from_corpus(corpus), load_engine(model, Decoding(), max_batch=max_batch)
    engine.translate([steps.encode(s) for s in sources[:max_batch]])
    started = time.perf_counter()
    for first in range(0, len(sources), max_batch):
        found = engine.translate([steps.encode(s) for s in sources[first:first + max_batch]])
        [steps.decode(hypotheses[0][1]) for hypotheses in found]
    seconds = time.perf_counter() - started
    engine.close()
    return len(sources) / seconds


def load(port, sources, clients):
    """N clients, one sentence a request: (seconds, latencies)."""
    queue, lock, latencies = list(reversed(sources)), threading.Lock(), []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                if not queue:
                    break
                source = queue.pop()
            started = time.perf_counter()
            connection.request("POST", "/translator/translate", json.dumps([{"src": source}]).encode(),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            body = json.loads(response.read())
            if response.status != 200 or not body[0][0]["tgt"]:
                raise RuntimeError(f"the server answered {response.status}: {body}")
            with lock:
                latencies.append(time.perf_counter() - started)
        connection.close()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return time.perf_counter() - started, latencies


def post(connection, items):
    """``(status, Retry-After or None, seconds)`` of one translation request on ``connection``; sent again on a
    new connection where the server had closed this one while it was idle (its keep-alive timeout)."""
    started = time.perf_counter()
    body = json.dumps(items).encode()
    try:
        connection.request("POST", "/translator/translate", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        connection.close()
        connection.request("POST", "/translator/translate", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
    response.read()
    return response.status, response.getheader("Retry-After"), time.perf_counter() - started


def flood_and_trickle(port, sources, requests, size=256):
    """One client with ``requests`` requests of ``size`` sentences in flight (503s retried after Retry-After),
    another sending one sentence at a time meanwhile: the statuses of each and the small client's latencies."""
    lock, done = threading.Lock(), threading.Event()
    flood, small, latencies, missing_retry = collections.Counter(), collections.Counter(), [], [0]

    def flooder(number):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        items = [{"src": sources[(number * size + i) % len(sources)]} for i in range(size)]
        while True:
            status, retry, _ = post(connection, items)
            with lock:
                flood[status] += 1
                missing_retry[0] += status == 503 and retry is None
            if status != 503:
                return
            time.sleep(float(retry or 1))

    def trickler():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        number = 0
        while not done.is_set():
            status, retry, seconds = post(connection, [{"src": sources[number % len(sources)]}])
            with lock:
                small[status] += 1
                missing_retry[0] += status == 503 and retry is None
                if status == 200:
                    latencies.append(seconds)
            number += 1
            time.sleep(0.02)

    small_client = threading.Thread(target=trickler)
    started = time.perf_counter()
    small_client.start()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        for future in [pool.submit(flooder, number) for number in range(requests)]:
            future.result()
    done.set()
    small_client.join()
    return {"flood_requests": requests, "flood_sentences": requests * size, "seconds": time.perf_counter() - started,
            "flood_statuses": dict(flood), "small_statuses": dict(small), "small_requests": len(latencies),
            "small_p50_ms": 1000 * statistics.median(latencies), "small_p95_ms": 1000 * percentile(latencies, 0.95),
            "small_max_ms": 1000 * max(latencies), "503_without_retry_after": missing_retry[0]}


def crowd(port, sources, clients):
    """``clients`` connections, each sending one sentence at the same moment: the statuses (or errors)."""
    ready = threading.Barrier(clients)

    def one(number):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.connect()
        ready.wait()
        try:
            status, retry, seconds = post(connection, [{"src": sources[number % len(sources)]}])
        except OSError as error:
            return f"error: {type(error).__name__}", None
        return (status if status != 503 or retry else "503 without Retry-After"), seconds

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients)))
    seconds = [s for _, s in answers if s is not None]
    return {"clients": clients, "statuses": dict(collections.Counter(str(status) for status, _ in answers)),
            "seconds": time.perf_counter() - started, "max_latency_ms": 1000 * max(seconds) if seconds else None}


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "multi30k", help="prepared corpus")
    parser.add_argument("--sentences", type=int, default=0, help="the first N test sentences (0: all)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--flood-requests", type=int, default=40, help="the flooding client's requests of 256")
    parser.add_argument("--crowd", type=int, default=300, help="clients sending one sentence at once")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    if not (args.corpus / "test.de").is_file():
        parser.error(f"--corpus {args.corpus}: no test.de (prepare it: python -m data_prep multi30k --out DIR)")
    sources = raw_sources(args.corpus, args.sentences)
    engine_rate = direct(args.model, args.corpus, sources, args.max_batch)
    print(f"direct, batches of {args.max_batch}: {engine_rate:.1f} sent/s", flush=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "onmt_lma.bin.server", "-model", str(args.model), "-corpus",
                               str(args.corpus), "-ip", "127.0.0.1", "-port", str(port), "-max_batch_size",
                               str(args.max_batch)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            if server.poll() is not None:
                sys.exit(f"onmt_lma_server -model {args.model} exited with {server.returncode}: run it alone to see why")
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/health")
                break
            except OSError:
                time.sleep(0.5)
        load(port, sources[: args.max_batch], min(8, args.max_batch))  # warm-up
        rows = []
        for clients in args.clients:
            seconds, latencies = load(port, sources, clients)
            rate = len(sources) / seconds
            rows.append({"clients": clients, "requests_per_s": len(latencies) / seconds, "sentences_per_s": rate,
                         "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * percentile(latencies, 0.95),
                         "vs_direct": rate / engine_rate})
            print(json.dumps(rows[-1]), flush=True)
        fairness = flood_and_trickle(port, sources, args.flood_requests)
        print(json.dumps(fairness), flush=True)
        crowded = crowd(port, sources, args.crowd)
        print(json.dumps(crowded), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    model, corpus = portable(args.model), portable(args.corpus)
    result = {"model": model, "corpus": corpus, "sentences": len(sources), "max_batch": args.max_batch, "beam": 5,
              "direct_sentences_per_s": engine_rate, "rows": rows, "flood_and_trickle": fairness, "crowd": crowded,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server.json").write_text(json.dumps(result, indent=1) + "\n")
    manifest = args.model / "manifest.json"
    origin = ""
    if manifest.is_file():  # an export: say of which checkpoint (a released model's path, if it is one)
        exported = json.loads(manifest.read_text())
        released = sorted(REPO.glob(f"results/*/models/{exported['checkpoint']}"))
        origin = (f" (`onmt_lma_export -model {portable(released[0]) if released else exported['checkpoint']}"
                  f"{' -int8' if exported['int8'] else ''} -output {model}`, on the native engine)")
    lines = [f"`python -m onmt_lma.study.runs study studies/bench.yaml --step server -- {model} --corpus {corpus}`"
             f"{origin}: {len(sources)} Multi30k test sentences as raw text, beam 5, one sentence a request, the server batching "
             f"up to {args.max_batch} sentences; {os.cpu_count()} cores shared by the server and its clients. "
             f"Direct: the corpus's steps and the engine on batches of {args.max_batch} in one process, "
             f"{engine_rate:.1f} sent/s.", "",
             "| concurrent clients | requests/s | sentences/s | p50 latency | p95 latency | vs direct batches |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['clients']} | {r['requests_per_s']:.1f} | {r['sentences_per_s']:.1f} | {r['p50_ms']:.0f} ms | "
              f"{r['p95_ms']:.0f} ms | {r['vs_direct']:.2f}x |" for r in rows]
    lines += ["", "One client waits for each answer before it sends the next sentence, so the server translates "
              "batches of one: that row is the engine's one-sentence-at-a-time speed plus HTTP. Many clients fill "
              "the server's batches; the goal is >= 0.8x of the direct batched rate at 64 clients."]
    lines += fairness_lines(fairness, crowded)
    (args.out / "server.md").write_text("# onmt_lma_server under load\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def fairness_lines(fairness, crowded):
    """The report's section on the flood, the trickle and the crowd, with each goal met or missed."""
    server_errors = {status: count for part in ("flood_statuses", "small_statuses")
                     for status, count in fairness[part].items() if int(status) >= 500 and int(status) != 503}
    crowd_ok = set(crowded["statuses"]) <= {"200", "503"}
    goals = [("small client's p95 latency < 2 s", fairness["small_p95_ms"] < 2000),
             ("every 503 with Retry-After", fairness["503_without_retry_after"] == 0),
             ("no 5xx but 503", not server_errors),
             (f"{crowded['clients']} concurrent clients all answered", crowd_ok)]
    return ["", "## A flood beside a trickle, and a crowd", "",
            f"One client keeps {fairness['flood_requests']} requests of 256 sentences in flight "
            f"({fairness['flood_sentences']} sentences; a request answered 503 is sent again after its Retry-After) "
            "while another sends one sentence a request, for the "
            f"{fairness['seconds']:.0f} s the flood lasts. The server's queue holds 1024 sentences (its default); "
            "it serves waiting requests in turn, a sentence each per batch.", "",
            "| client | answers | p50 latency | p95 latency | max |", "| --- | --- | --- | --- | --- |",
            f"| flood (256 a request) | {fairness['flood_statuses']} | | | |",
            f"| one sentence a request | {fairness['small_statuses']} | {fairness['small_p50_ms']:.0f} ms | "
            f"{fairness['small_p95_ms']:.0f} ms | {fairness['small_max_ms']:.0f} ms |", "",
            f"{crowded['clients']} clients, each on its own connection, sending one sentence at the same moment: "
            f"{crowded['statuses']} in {crowded['seconds']:.1f} s (slowest answer "
            f"{crowded['max_latency_ms']:.0f} ms).", "",
            "Goals: " + "; ".join(f"{goal}: {'met' if met else 'MISSED'}" for goal, met in goals) + "."]


if __name__ == "__main__":
    main()
