"""The server under bad and hostile input, without a model: a stand-in engine whose failures and speed the
tests choose, the real application, batcher and connection protocol around it."""

import asyncio
import dataclasses
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from onmt_lma.serve.app import Limits, ServedModel, make_app
from onmt_lma.serve.batching import Batcher, QueueFull
from onmt_lma.serve.config import ModelSpec
from onmt_lma.deploy.decoding import Decoding


class StandInEngine:
    """Translates a line to itself upper-cased; fails on any batch holding a line with ``BOOM``."""

    kind = "stand-in"

    def __init__(self, seconds_per_batch=0.0):
        self.batches, self.seconds_per_batch = [], seconds_per_batch

    def translate(self, lines):
        self.batches.append(list(lines))
        time.sleep(self.seconds_per_batch)
        if any("BOOM" in line for line in lines):
            raise RuntimeError(f"engine internals at 0x{id(self):x}: {lines}")
        return [[(-1.0, line.upper())] for line in lines]

    def close(self):
        pass


class IdentitySteps:
    corpus = "multi30k"
    origin = "/very/secret/place/data/multi30k"

    def encode(self, line):
        if "\x00" in line:
            raise ValueError("the tokenizer chokes")
        return " ".join(line.split())

    def decode(self, tokens):
        return tokens


def served_app(engine, **limits):
    limits = Limits(**{"wait_s": 0.0, **limits})
    spec = ModelSpec(1, Path("/very/secret/place/models/student.pt"), Decoding(beam_size=1))
    served = {"1": ServedModel(spec, engine, IdentitySteps(), Batcher(engine, limits.max_batch, limits.wait_s,
                                                                       limits.max_queued))}
    return make_app(served, limits)


def run_async(coroutine):
    return asyncio.new_event_loop().run_until_complete(coroutine)


# --------------------------------------------------------------------------- #
# The batcher
# --------------------------------------------------------------------------- #
def test_a_one_sentence_request_waits_one_batch_behind_a_large_one():
    engine = StandInEngine(seconds_per_batch=0.01)

    async def scenario():
        batcher = Batcher(engine, max_batch=8, wait_s=0.0, max_queued=1000)
        batcher.start()
        large = [asyncio.ensure_future(batcher.translate([f"big {i} {j}" for j in range(100)])) for i in range(3)]
        await asyncio.sleep(0)
        small = await batcher.translate(["small one"])
        await asyncio.gather(*large)
        await batcher.stop()
        return small

    assert run_async(scenario()) == [[(-1.0, "SMALL ONE")]]
    where = next(i for i, batch in enumerate(engine.batches) if "small one" in batch)
    assert where <= 1, f"the small request waited {where} batches of 8 behind 300 queued sentences"
    assert all(len(batch) <= 8 for batch in engine.batches)


def test_a_full_queue_refuses_at_once_with_the_time_to_drain_it():
    engine = StandInEngine(seconds_per_batch=0.05)

    async def scenario():
        batcher = Batcher(engine, max_batch=4, wait_s=0.0, max_queued=10)
        batcher.start()
        first = asyncio.ensure_future(batcher.translate(["a"] * 4))
        await first  # a measured speed
        waiting = asyncio.ensure_future(batcher.translate(["b"] * 10))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as full:
            await batcher.translate(["c"] * 3)
        await waiting
        await batcher.stop()
        return full.value

    full = run_async(scenario())
    assert full.retry_after >= 1 and "at capacity" in str(full)


def test_an_engine_failure_fails_only_the_request_whose_sentence_caused_it():
    engine = StandInEngine()

    async def scenario():
        batcher = Batcher(engine, max_batch=32, wait_s=0.05, max_queued=100)
        batcher.start()
        results = await asyncio.gather(batcher.translate(["fine one", "fine two"]), batcher.translate(["BOOM"]),
                                       batcher.translate(["fine three"]), return_exceptions=True)
        await batcher.stop()
        return results

    good, bad, other = run_async(scenario())
    assert good == [[(-1.0, "FINE ONE")], [(-1.0, "FINE TWO")]] and other == [[(-1.0, "FINE THREE")]]
    assert isinstance(bad, RuntimeError)
    assert len(engine.batches[0]) == 4  # they were batched together, then retried one by one


# --------------------------------------------------------------------------- #
# The application
# --------------------------------------------------------------------------- #
def test_a_lone_surrogate_is_that_request_s_400_and_the_others_are_answered():
    engine = StandInEngine()
    with TestClient(served_app(engine)) as client:
        body = json.dumps([{"src": "Hund \ud800 Katze"}])  # json.dumps writes it as the escape \ud800
        answer = client.post("/translator/translate", content=body)
        assert answer.status_code == 400
        assert answer.json()["error"] == "item 0: src is not Unicode text: '\\ud800' at position 5 is a lone surrogate"
        choked = client.post("/translator/translate", json=[{"src": "ein \x00 Hund"}])
        assert choked.status_code == 400 and "text steps cannot take this sentence (ValueError)" in choked.json()["error"]
        assert client.post("/translator/translate", json=[{"src": "ein Hund"}]).json()[0][0]["tgt"] == "EIN HUND"
    assert all("\ud800" not in line for batch in engine.batches for line in batch)


def test_deeply_nested_json_is_a_400():
    with TestClient(served_app(StandInEngine())) as client:
        answer = client.post("/translator/translate", content="[" * 100000 + "]" * 100000)
        assert answer.status_code == 400 and "nests JSON too deeply" in answer.json()["error"]


def test_a_500_carries_no_internals():
    with TestClient(served_app(StandInEngine())) as client:
        answer = client.post("/translator/translate", json=[{"src": "BOOM"}])
        assert answer.status_code == 500
        assert answer.json() == {"error": "translation failed on a sentence of this request; the server log has the "
                                          "details", "status": "error"}


def test_models_names_no_absolute_paths():
    with TestClient(served_app(StandInEngine())) as client:
        text = client.get("/translator/models").text
    assert "/very/secret" not in text and json.loads(text)[0]["model"] == "student.pt"
    assert json.loads(text)[0]["corpus"] == "multi30k"


def test_a_key_is_required_on_every_route_but_health():
    with TestClient(served_app(StandInEngine(), api_key="s3cret")) as client:
        for method, path in (("post", "/translator/translate"), ("get", "/translator/models")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                answer = getattr(client, method)(path, headers=headers, **({"json": [{"src": "x"}]} if method == "post"
                                                                            else {}))
                assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/translator/translate", json=[{"src": "x"}], headers=good).status_code == 200
        assert client.get("/translator/models", headers=good).status_code == 200
        assert client.get("/health").status_code == 200


def test_over_capacity_a_request_gets_503_with_retry_after():
    engine = StandInEngine(seconds_per_batch=0.3)
    with TestClient(served_app(engine, max_batch=2, max_queued=4)) as client:
        answers = []

        def send(count):
            answers.append(client.post("/translator/translate", json=[{"src": "x"}] * count))

        threads = [threading.Thread(target=send, args=(3,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = sorted(answer.status_code for answer in answers)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1 and "at capacity" in answer.json()["error"]


def test_the_server_listens_on_this_machine_only_by_default_and_reads_its_key_from_a_file(tmp_path):
    from onmt_lma.base.errors import UserError
    from onmt_lma.bin.server import api_key, get_parser

    opt = get_parser().parse_args(["-model", "m.pt"])
    assert opt.ip == "127.0.0.1" and api_key(opt) is None
    key_file = tmp_path / "key"
    key_file.write_text("  s3cret \nignored\n")
    assert api_key(get_parser().parse_args(["-model", "m.pt", "-api_key_file", str(key_file)])) == "s3cret"
    key_file.write_text("\n")
    with pytest.raises(UserError, match="first line is empty"):
        api_key(get_parser().parse_args(["-model", "m.pt", "-api_key_file", str(key_file)]))


# --------------------------------------------------------------------------- #
# Connections
# --------------------------------------------------------------------------- #
@pytest.fixture
def live_server():
    """The application on uvicorn with the header deadline (0.5 s) and a 0.5 s read timeout, on a free port."""
    import uvicorn

    from onmt_lma.serve.connections import header_timeout_protocol

    app = served_app(StandInEngine(), read_timeout_s=0.5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_keep_alive=1,
                            http=header_timeout_protocol(0.5))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def closed_within(sock, seconds):
    """Whether the server closes ``sock`` within ``seconds`` (what it sent before closing is returned too)."""
    sock.settimeout(seconds)
    received = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, received
            received += chunk
    except socket.timeout:
        return False, received


def test_silent_and_half_sent_connections_are_closed(live_server):
    with socket.create_connection(("127.0.0.1", live_server)) as silent:
        assert closed_within(silent, 3)[0]
    with socket.create_connection(("127.0.0.1", live_server)) as slow_head:
        slow_head.sendall(b"POST /translator/translate HTTP/1.1\r\nHost: x\r\n")
        assert closed_within(slow_head, 3)[0]
    with socket.create_connection(("127.0.0.1", live_server)) as half_body:
        half_body.sendall(b"POST /translator/translate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"src\"")
        closed, received = closed_within(half_body, 3)
        assert b" 408 " in received.split(b"\r\n")[0] and b"not received within 0.5 s" in received
