"""onmt_lma_server, started for real on a free port: OpenNMT-py's request and response shape, translations equal
to onmt_lma_translate's, concurrent requests batched and aligned, every bad input answered (the server alive
after it), and a graceful shutdown on SIGTERM."""

import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, run

pytestmark = pytest.mark.integration


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port, method, path, body=None, timeout=120):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


class Server:
    """``onmt_lma_server ARGS`` on a free port, in an empty working directory that it must leave empty."""

    def __init__(self, *args, log=None):
        self.port = free_port()
        self.log = log
        self.cwd = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen([str(BIN / "onmt_lma_server"), "-ip", "127.0.0.1", "-port", str(self.port),
                                         *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        cwd=self.cwd.name)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.process.stdout.read()[-3000:]}")
            try:
                if request(self.port, "GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the server did not start in 120 s")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=60)
        left = os.listdir(self.cwd.name)
        self.cwd.cleanup()
        assert not left, f"the server wrote {left} in its working directory"
        return self.process.returncode, output


@pytest.fixture(scope="module")
def sources(corpus_dir):
    """Raw German test sentences (detokenized from the tiny corpus's tokenized side)."""
    from sacremoses import MosesDetokenizer

    detokenizer = MosesDetokenizer("de")
    return [detokenizer.detokenize(line.split()) for line in (corpus_dir / "test.de").read_text().splitlines()[:24]]


@pytest.fixture(scope="module")
def server(lma_student, corpus_dir):
    started = Server("-model", lma_student, "-corpus", corpus_dir, "-beam_size", 3, "-max_length", 20,
                     "-max_request_sentences", 100, "-max_src_tokens", 60, "-max_request_bytes", 20000)
    yield started
    if started.process.poll() is None:
        started.stop()


def expected_translations(lma_student, corpus_dir, sources, tmp_path, *engine):
    """onmt_lma_translate on the same sentences, put through the corpus preparation's own Moses steps and back
    (the tiny corpus has no SentencePiece model)."""
    from data_prep.text import moses_detokenize, moses_tokenize

    assert not (Path(corpus_dir) / "spm.model").exists()
    src = tmp_path / "src.txt"
    src.write_text("".join(line + "\n" for line in moses_tokenize(sources, "de", desc="test")))
    run("onmt_lma_translate", "-model", lma_student, "-src", src, "-output", tmp_path / "hyp.txt", "-beam_size", 3,
        "-max_length", 20, *engine)
    return moses_detokenize((tmp_path / "hyp.txt").read_text().splitlines(), "en")


def test_translations_equal_onmt_lma_translate_s_in_opennmt_py_s_shape(server, lma_student, corpus_dir, sources,
                                                                        tmp_path):
    status, answer = request(server.port, "POST", "/translator/translate", [{"src": s, "id": 1} for s in sources])
    assert status == 200 and len(answer) == 1 and len(answer[0]) == len(sources)
    assert [item["src"] for item in answer[0]] == sources
    assert all(item["n_best"] == 1 and isinstance(item["pred_score"], float) for item in answer[0])
    assert [item["tgt"] for item in answer[0]] == expected_translations(lma_student, corpus_dir, sources, tmp_path)
    assert request(server.port, "GET", "/translator/health") == (200, {"status": "ok"})
    status, models = request(server.port, "GET", "/translator/models")
    assert status == 200 and models[0]["engine"] == "pytorch" and models[0]["opt"]["beam_size"] == 3


def test_64_concurrent_requests_are_all_answered_and_aligned(server, sources):
    def one(index):
        lines = [sources[index % len(sources)], "", sources[(index + 1) % len(sources)]]
        return lines, request(server.port, "POST", "/translator/translate", [{"src": s} for s in lines])

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    alone = {}
    for lines, (status, answer) in answers:
        assert status == 200 and [item["src"] for item in answer[0]] == lines
        assert answer[0][1]["tgt"] == ""  # an empty source: an empty translation, in its place
        for item in answer[0]:
            assert alone.setdefault(item["src"], item["tgt"]) == item["tgt"]  # the same sentence, the same answer


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not JSON"),
    ({"src": "ein Hund"}, 400, "expected a JSON list"),
    ([{"text": "ein Hund"}], 400, 'item 0: expected {"src"'),
    ([{"src": 12}], 400, "src must be a string"),
    ([{"src": "ein Hund", "id": 9}], 400, "no model with id 9"),
    ([{"src": "ein Hund"}] * 101, 413, "at most 100"),
    ([{"src": " ".join(["Hund"] * 61)}], 413, "61 tokens"),
    ([{"src": "x" * 30000}], 413, "at most 20000"),
])
def test_bad_input_gets_a_clear_answer_and_the_server_goes_on(server, sources, body, status, message):
    got, answer = request(server.port, "POST", "/translator/translate", body)
    assert got == status and answer["status"] == "error" and message in answer["error"], answer
    ok, translated = request(server.port, "POST", "/translator/translate", [{"src": sources[0]}])
    assert ok == 200 and translated[0][0]["tgt"]


def test_a_request_past_its_timeout_gets_504_and_others_go_on(lma_student, corpus_dir, sources):
    slow = Server("-model", lma_student, "-corpus", corpus_dir, "-request_timeout", "0.001", "-max_length", 20)
    try:
        status, answer = request(slow.port, "POST", "/translator/translate", [{"src": s} for s in sources])
        assert status == 504 and "timeout" in answer["error"]
        assert request(slow.port, "GET", "/health") == (200, {"status": "ok"})
    finally:
        slow.stop()


def test_sigterm_finishes_the_requests_in_flight_then_exits(lma_student, corpus_dir, sources):
    server = Server("-model", lma_student, "-corpus", corpus_dir, "-max_length", 20, "-batch_wait_ms", 300)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(request, server.port, "POST", "/translator/translate", [{"src": s}]) for s in sources[:4]]
        time.sleep(0.1)  # in flight: waiting for the batch window
        returncode, output = server.stop()
        answers = [future.result() for future in pending]
    assert all(status == 200 and answer[0][0]["tgt"] for status, answer in answers)
    assert returncode in (0, -signal.SIGTERM) and "stopped" in output  # uvicorn re-raises the signal once done
    assert output.count("POST /translator/translate 200") == 4  # each request logged with its time


def test_exports_are_served_with_the_same_translations(lma_student, corpus_dir, sources, tmp_path):
    """An export folder is served on the native engine unless "engine" says onnx; both translate as
    onmt_lma_translate on that engine."""
    run("onmt_lma_export", "-model", lma_student, "-output", tmp_path / "export")
    conf = tmp_path / "conf.json"
    options = {"corpus": str(corpus_dir), "opt": {"beam_size": 3, "max_length": 20}}
    conf.write_text(json.dumps({"models_root": str(tmp_path), "models": [
        {"id": 7, "model": "export", **options}, {"id": 8, "model": "export", "engine": "onnx", **options}]}))
    server = Server("-config", conf)
    try:
        models = {m["model_id"]: m["engine"] for m in request(server.port, "GET", "/translator/models")[1]}
        assert models == {7: "native", 8: "onnx"}
        for model_id, engine in models.items():
            status, answer = request(server.port, "POST", "/translator/translate",
                                     [{"src": s, "id": model_id} for s in sources])
            expected = expected_translations(tmp_path / "export", corpus_dir, sources, tmp_path, "-engine", engine,
                                             "-batch_size", "32")
            assert status == 200 and [item["tgt"] for item in answer[0]] == expected, engine
    finally:
        server.stop()


@pytest.mark.parametrize("conf, message", [
    ({"models": []}, "at least one model"),
    ({"models": [{"id": 1, "model": "m.pt", "tokenizer": {"type": "sentencepiece"}}]}, "name it with 'corpus'"),
    ({"models": [{"id": 1, "model": ["a.pt", "b.pt"]}]}, "ensemble of 2 models"),
    ({"models": [{"id": 1, "model": "m.pt", "opt": {"beam_size": "five"}}]}, "opt: -beam_size 'five': expected an integer"),
    ({"models": [{"id": 1, "model": "m.pt", "opt": {"gpu": 0}}]}, "on the CPU"),
    ({"models": [{"id": 1, "model": "m.pt"}, {"id": 1, "model": "n.pt"}]}, "id 1 is given twice"),
    ({"models": [{"id": 1, "model": "missing.pt"}]}, "missing.pt: no such file"),
])
def test_a_bad_model_list_is_a_one_line_error(tmp_path, conf, message):
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    (tmp_path / "m.pt").write_bytes(b"")
    result = subprocess.run([str(BIN / "onmt_lma_server"), "-config", str(tmp_path / "conf.json")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_model_without_a_corpus_is_refused_naming_the_option(lma_student):
    result = subprocess.run([sys.executable, "-m", "onmt_lma.bin.server", "-model", str(lma_student)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "give -corpus DIR" in result.stderr


def test_config_json_is_the_model_list_and_config_yaml_the_shared_options(tmp_path):
    from onmt_lma.bin.server import conf_json_as_models_conf, get_parser

    (tmp_path / "student.yaml").write_text("beam_size: 3\nport: 6001\nhidden_size: 64\n")
    parse = get_parser().parse_args
    opt = parse(conf_json_as_models_conf(["-config", str(tmp_path / "student.yaml"), "-model", "m.pt"]))
    assert (opt.beam_size, opt.port, opt.models_conf, opt.model) == (3, 6001, None, "m.pt")
    opt = parse(conf_json_as_models_conf(["-config", str(tmp_path / "conf.json")]))
    assert opt.models_conf == str(tmp_path / "conf.json") and opt.model is None


def test_the_readme_s_server_line_and_curl_call_answer_as_written(tmp_path):
    """The README's block (marked ``run by tests/test_server.py``): the released student, the prepared Multi30k
    corpus, the curl body; the answer is the one the README shows."""
    import re
    import shlex

    from data_prep.__main__ import main as data_prep_main
    from conftest import REPO, shared_data

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- run by tests/test_server.py -->\n```bash\n(.*?)```", readme, re.S)[1].splitlines()
    start, curl, shown = block
    data_prep_main(["multi30k", "--out", str(tmp_path / "multi30k"), "--source", str(shared_data() / "multi30k")])
    args = [str(tmp_path / "multi30k") if a == "data/multi30k" else str(REPO / a) if a.startswith("results/")
            else a for a in shlex.split(start)[1:]]
    body = json.loads(shlex.split(curl)[-1])
    answer = json.loads(shown.removeprefix("# "))
    server = Server(*args)
    try:
        status, payload = request(server.port, "POST", "/translator/translate", body)
    finally:
        server.stop()
    assert status == 200 and payload[0][0]["tgt"] == answer[0][0]["tgt"]
    assert payload[0][0]["src"] == body[0]["src"] and round(payload[0][0]["pred_score"], 2) == answer[0][0]["pred_score"]
