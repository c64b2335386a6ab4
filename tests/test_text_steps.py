"""Text steps that travel with an export (onmt_lma/deploy/text.py): raw text in and plain text out with the
export alone, on onmt_lma_translate -raw_text and onmt_lma_server, equal to the corpus preparation's own Moses
steps around a tokenized translation; and their refusals as one line."""

import json
import shutil

import pytest

from data_prep.text import MOSES_OPTIONS, moses_detokenize, moses_tokenize
from onmt_lma.base.files import sha256_of
from onmt_lma.deploy.manifest import FORMAT, SPECIAL
from onmt_lma.deploy.text import TEXT_FILE, TextSteps, TextStepsError

from conftest import run


def test_the_steps_survive_the_trip_through_an_export_folder(corpus_dir, tmp_path):
    steps = TextSteps.from_corpus(corpus_dir)
    assert (steps.source_language, steps.target_language, steps.corpus) == ("de", "en", "multi30k")
    folder = tmp_path / "export"
    folder.mkdir()
    names = steps.write(folder)
    manifest = {"format": FORMAT, "checkpoint": "m.pt", "checkpoint_sha256": "0", "activation": "relu",
                "hidden_size": 8, "layers": 1, "heads": 1, "max_positions": 9, "int8": False,
                "special": {key: 0 for key in SPECIAL}, "files": {"src.vocab.json": "0", "tgt.vocab.json": "0"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TextStepsError, match="text.json is not the file the export wrote"):
        TextSteps.from_export(folder)
    manifest["files"].update({name: sha256_of(folder / name) for name in names})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    back = TextSteps.from_export(folder)
    assert (back.source_language, back.target_language, back.corpus, back.sentencepiece) == ("de", "en", "multi30k",
                                                                                            None)


def test_a_sentence_goes_through_moses_as_the_corpus_was_prepared(corpus_dir):
    steps = TextSteps.from_corpus(corpus_dir)
    raw = ["Ein Mann fährt ein rot-weißes Fahrrad.", "„Er sagt:  <hallo> & tschüss“"]
    assert [steps.encode(line) for line in raw] == moses_tokenize(raw, "de", desc="test")
    tokens = ["a man &apos;s red-white bike .", "he says &lt; hello &gt; &amp; bye"]
    assert [steps.decode(line) for line in tokens] == moses_detokenize(tokens, "en")
    assert MOSES_OPTIONS == {"aggressive_dash_splits": True, "escape": True}


@pytest.mark.integration
def test_an_export_translates_raw_text_alone_and_serves_it_without_a_corpus(lma_student, corpus_dir, tmp_path):
    from test_server import Server, request

    export = tmp_path / "export"
    run("onmt_lma_export", "-model", lma_student, "-output", export, "-corpus", corpus_dir)
    manifest = json.loads((export / "manifest.json").read_text())
    assert TEXT_FILE in manifest["files"] and "text_refused" not in manifest
    tokenized = (corpus_dir / "test.de").read_text().splitlines()[:8]
    raw = [line for line in (moses_detokenize(tokenized, "de")[:4] + [""] + moses_detokenize(tokenized, "de")[4:])]
    (tmp_path / "raw.de").write_text("\n".join(raw) + "\n")
    run("onmt_lma_translate", "-model", export, "-engine", "native", "-src", tmp_path / "raw.de", "-raw_text",
        "-output", tmp_path / "raw.en", "-beam_size", "3", "-max_length", "20")
    (tmp_path / "tok.de").write_text("\n".join(moses_tokenize([line for line in raw if line], "de", desc="t")) + "\n")
    run("onmt_lma_translate", "-model", export, "-engine", "native", "-src", tmp_path / "tok.de",
        "-output", tmp_path / "tok.en", "-beam_size", "3", "-max_length", "20")
    by_hand = moses_detokenize((tmp_path / "tok.en").read_text().splitlines(), "en")
    translated = (tmp_path / "raw.en").read_text().splitlines()
    assert translated[4] == "" and translated[:4] + translated[5:] == by_hand
    assert not any(escape in line for line in translated for escape in ("&apos;", "&quot;", "&amp;", "&lt;"))

    small = tmp_path / "small"  # what the runtime reads, alone
    run("onmt_lma_export", "-model", lma_student, "-output", small, "-corpus", corpus_dir, "-runtime_only")
    assert sorted(p.name for p in small.iterdir()) == ["manifest.json", "native.safetensors", "src.vocab.json",
                                                     TEXT_FILE, "tgt.vocab.json"]
    run("onmt_lma_translate", "-model", small, "-engine", "native", "-src", tmp_path / "raw.de", "-raw_text",
        "-output", tmp_path / "small.en", "-beam_size", "3", "-max_length", "20")
    assert (tmp_path / "small.en").read_text() == (tmp_path / "raw.en").read_text()
    refused = run("onmt_lma_translate", "-model", small, "-engine", "onnx", "-src", tmp_path / "tok.de",
                  "-output", tmp_path / "x.en", expect_ok=False)
    assert refused.returncode == 2 and "a runtime-only export" in refused.stderr

    server = Server("-model", export, "-beam_size", 3, "-max_length", 20)  # no -corpus: the export's own steps
    try:
        status, answer = request(server.port, "POST", "/translator/translate",
                                 [{"src": line, "id": 1} for line in raw if line])
    finally:
        server.stop()
    assert status == 200 and [item["tgt"] for item in answer[0]] == by_hand


@pytest.mark.integration
def test_without_text_steps_raw_text_says_what_to_give(lma_student, corpus_dir, tmp_path):
    """The tiny corpus the student was trained on was not prepared by data_prep: its export carries no text
    steps and says so; -raw_text then asks for -corpus; a changed text.json and a corpus of other words are
    refused as one line."""
    export = tmp_path / "export"
    result = run("onmt_lma_export", "-model", lma_student, "-output", export)
    assert "no text steps" in result.stderr and "-corpus DIR" in result.stderr
    assert "text_refused" in json.loads((export / "manifest.json").read_text())
    (tmp_path / "raw.de").write_text("Ein Mann.\n")
    result = run("onmt_lma_translate", "-model", export, "-engine", "native", "-src", tmp_path / "raw.de",
                 "-raw_text", "-output", tmp_path / "o.en", expect_ok=False)
    assert result.returncode == 2 and "give -corpus DIR, or export it with them" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o.en").exists()

    carried = tmp_path / "carried"
    run("onmt_lma_export", "-model", lma_student, "-output", carried, "-corpus", corpus_dir)
    text = json.loads((carried / TEXT_FILE).read_text())
    (carried / TEXT_FILE).write_text(json.dumps({**text, "source_language": "fr"}))
    result = run("onmt_lma_translate", "-model", carried, "-engine", "native", "-src", tmp_path / "raw.de",
                 "-raw_text", "-output", tmp_path / "o.en", expect_ok=False)
    assert result.returncode == 2 and "text.json is not the file the export wrote" in result.stderr

    other = tmp_path / "other"
    shutil.copytree(corpus_dir, other)
    (other / "vocab.de").write_text("".join(f"wort{i}\t1\n" for i in range(500)))
    result = run("onmt_lma_export", "-model", lma_student, "-output", tmp_path / "x", "-corpus", other,
                 expect_ok=False)
    assert result.returncode == 2 and "is not this corpus's" in result.stderr and not (tmp_path / "x").exists()


def test_the_released_export_is_what_its_sums_say_and_translates_raw_text_alone():
    """results/multi30k_converged/models/exports: the recommended student (ReLU, twice the peak) as the
    runtime reads it (onmt_lma_export -runtime_only -corpus data/multi30k), every file as SHA256SUMS says, made
    from the released checkpoint, translating raw German as the README shows."""
    from conftest import REPO
    from onmt_lma.deploy.decoding import Decoding
    from onmt_lma.deploy.engines import open_export
    from onmt_lma.deploy.text import text_steps

    models = REPO / "results" / "multi30k_converged" / "models"
    released = models / "exports"
    listed = dict(line.split("  ")[::-1] for line in (released / "SHA256SUMS").read_text().splitlines())
    folder = released / "student64_relu_lr2x_seed1"
    assert sorted(listed) == sorted(f"{folder.name}/{p.name}" for p in folder.iterdir())
    assert all(sha256_of(released / name) == digest for name, digest in listed.items())
    checkpoints = dict(line.split("  ")[::-1] for line in (models / "SHA256SUMS").read_text().splitlines())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == checkpoints[manifest["checkpoint"]] == checkpoints[
        "student64_relu_lr2x_seed1.pt"]
    steps = text_steps(folder)
    (score, tokens), = open_export("native", folder).translate([steps.encode("Zwei Hunde spielen im Schnee.")],
                                                                 Decoding(), 1)[0]
    assert steps.decode(tokens) == "Two dogs play in the snow." and score == pytest.approx(-0.114, abs=1e-3)
