"""data_prep on the real data in ../shared/data and on fixtures built here in the corpora's layouts."""

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml

from data_prep.__main__ import main as data_prep_main
from data_prep.pipeline import prepare as prepare_corpus
from data_prep.sources import sha256_of
from data_prep.text import normalize_whitespace

from conftest import shared_data

NBSP = "\u00a0"


def prep(*argv):
    data_prep_main([str(a) for a in argv])


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def assert_vocab_readable_by_opennmt(path):
    """OpenNMT-py's reader splits each line on any whitespace: a token and a count."""
    from onmt.inputters.inputter import _read_vocab_file

    for number, line in enumerate(lines(path), 1):
        fields = line.split()
        assert len(fields) == 2 and fields[1].isdigit(), f"{path}:{number}: {line!r}"
    assert len(_read_vocab_file(str(path), 0)) == len(lines(path))


@pytest.fixture(scope="module")
def multi30k_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi30k")
    prep("multi30k", "--out", out, "--source", shared_data() / "multi30k")
    return out


def test_multi30k_from_the_local_copy(multi30k_out):
    out = multi30k_out
    counts = {"train": 29000, "valid": 1014, "test": 1000}
    for split, count in counts.items():
        assert len(lines(out / f"{split}.de")) == len(lines(out / f"{split}.en")) == count
    raw_test = [normalize_whitespace(l) for l in gzip.open(shared_data() / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8").read().splitlines()]
    assert lines(out / "test.ref.detok.en") == raw_test
    assert lines(out / "test.ref.tok.en") == lines(out / "test.en")
    # Moses tokenization: punctuation split off, XML escaped, aggressive hyphens
    assert lines(out / "test.en")[0].endswith(" .") and not lines(out / "test.ref.detok.en")[0].endswith(" .")
    assert any(" @-@ " in line for line in lines(out / "train.en"))
    for lang in ("de", "en"):
        assert_vocab_readable_by_opennmt(out / f"vocab.{lang}")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["train.de"] == 29000 and manifest["outputs"]["test.ref.detok.en"] == 1000
    for name, entry in manifest["inputs"].items():
        assert entry["sha256"] == sha256_of(shared_data() / "multi30k" / name)
    assert manifest["options"]["subword"] == "none"
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["src_vocab_size"] == data["tgt_vocab_size"] == 50000
    assert data["data"]["corpus_1"]["path_src"] == str(out / "train.de")
    assert all(not any(NBSP in l for l in lines(out / f"{s}.{g}")) for s in counts for g in ("de", "en"))


@pytest.mark.integration  # rebuilds a corpus: slower
def test_a_rerun_skips_and_a_changed_option_rebuilds(multi30k_out, tmp_path, capsys):
    out = tmp_path / "m"
    shutil.copytree(multi30k_out, out)
    for path in out.glob("*.yaml"):  # the copy's data.yaml names the copy's files
        path.write_text(path.read_text().replace(str(multi30k_out), str(out)))
    before = (out / "train.en").stat().st_mtime_ns
    prep("multi30k", "--out", out, "--source", shared_data() / "multi30k")
    assert "up to date" in capsys.readouterr().err
    assert (out / "train.en").stat().st_mtime_ns == before
    # a truncated output is not "up to date": the directory is rebuilt, saying why
    full = (out / "train.en").read_bytes()
    (out / "train.en").write_bytes(full[: len(full) // 2])
    prep("multi30k", "--out", out, "--source", shared_data() / "multi30k")
    assert "rebuilding, outputs differ from" in capsys.readouterr().err
    assert (out / "train.en").read_bytes() == full
    prep("multi30k", "--out", out, "--source", shared_data() / "multi30k", "--max-length", "12")
    kept = len(lines(out / "train.en"))
    assert 0 < kept < 29000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["train_pairs_dropped_by_length"] == 29000 - kept
    assert all(len(l.split()) <= 12 for l in lines(out / "train.de"))
    assert len(lines(out / "test.en")) == 1000  # the filter is for train only


@pytest.mark.integration  # rebuilds a corpus: slower
def test_sentencepiece_mode(multi30k_out, tmp_path):
    import sentencepiece as spm

    source = tmp_path / "src"
    shutil.copytree(shared_data() / "multi30k", source)
    out = tmp_path / "sp"
    prep("multi30k", "--out", out, "--source", f"file://{source}", "--subword", "sentencepiece",
         "--vocab-size", "2000")
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert sp.get_piece_size() == 2000
    assert "▁" in lines(out / "train.en")[0]
    decoded = [sp.decode(line.split()) for line in lines(out / "test.en")]
    assert decoded == lines(out / "test.ref.tok.en") == lines(multi30k_out / "test.en")
    assert len(lines(out / "train.de")) == 29000
    for lang in ("de", "en"):
        assert_vocab_readable_by_opennmt(out / f"vocab.{lang}")
    assert json.loads((out / "manifest.json").read_text())["options"]["vocab_size"] == 2000


@pytest.fixture
def ope_source(tmp_path):
    """Ope's real test split, and a train split in the same layout made from its first lines."""
    source = tmp_path / "ope-src"
    source.mkdir()
    for lang in ("de", "en"):
        test = shared_data() / "ope" / f"{lang}-val-clean.10K.txt"
        shutil.copy(test, source / test.name)
        head = lines(test)[:3000]
        (source / f"{lang}-train-clean.200K.txt").write_text("\n".join(head) + "\n", encoding="utf-8")
    return source


def test_ope_test_split_and_carved_validation(ope_source, tmp_path):
    out = tmp_path / "ope"
    prep("ope", "--out", out, "--source", ope_source, "--valid-size", "500")
    assert len(lines(out / "train.de")) == len(lines(out / "train.en")) == 2500
    assert lines(out / "valid.en") == lines(ope_source / "en-train-clean.200K.txt")[2500:]
    assert len(lines(out / "test.de")) == 6003
    raw = lines(shared_data() / "ope" / "en-val-clean.10K.txt")
    assert lines(out / "test.en") == [normalize_whitespace(l) for l in raw]
    assert sum(l != normalize_whitespace(l) for l in raw) > 0  # the real file needs the normalization
    detok = lines(out / "test.ref.detok.en")
    assert len(detok) == 6003 and not any("&quot;" in l or "&apos;" in l for l in detok)
    assert any('"' in l for l in detok)
    assert json.loads((out / "manifest.json").read_text())["options"]["valid_size"] == 500


def europarl_archive(path, de, en, extra_members=True, unsafe=False, members=None):
    """A .tgz in the WMT13 layout, with other members that must be skipped."""
    contents = {
        "training/europarl-v7.de-en.de": "\n".join(de) + "\n",
        "training/europarl-v7.de-en.en": "\n".join(en) + "\n",
    }
    if extra_members:
        contents["training/europarl-v7.fr-en.fr"] = "Bonjour .\n"
        contents["training/europarl-v7.cs-en.cs"] = "Ahoj .\n"
    if unsafe:
        contents["../evil.txt"] = "outside\n"
    if members is not None:
        contents = {k: v for k, v in contents.items() if k in members}
    with tarfile.open(path, "w:gz") as tar:
        for name, text in contents.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def europarl_text():
    de = gzip.open(shared_data() / "multi30k" / "train.de.gz", "rt", encoding="utf-8").read().splitlines()[:1200]
    en = gzip.open(shared_data() / "multi30k" / "train.en.gz", "rt", encoding="utf-8").read().splitlines()[:1200]
    de[10], en[20], de[30], en[30] = "", "  ", "", ""  # pairs with an empty side
    en[40] = f"A well-known{NBSP}e-mail."
    return de, en


def test_wmt13_from_an_archive_with_other_members(europarl_text, tmp_path):
    de, en = europarl_text
    source = tmp_path / "wmt"
    source.mkdir()
    europarl_archive(source / "training-parallel-europarl-v7.tgz", de, en)
    out = tmp_path / "out"
    prep("wmt13", "--out", out, "--source", source, "--valid-size", "100")
    kept = 1200 - 3
    n_train = int(kept * 0.9)
    assert len(lines(out / "train.en")) == n_train - 100
    assert len(lines(out / "valid.en")) == 100
    assert len(lines(out / "test.en")) == len(lines(out / "test.de")) == kept - n_train
    pairs = [(d, e) for d, e in zip(de, en) if d.strip() and e.strip()]
    assert lines(out / "test.ref.detok.en") == [normalize_whitespace(e) for _, e in pairs[n_train:]]
    tokenized = lines(out / "train.en")
    assert "A well @-@ known e @-@ mail ." in tokenized
    assert not (out / "europarl-v7.fr-en.fr").exists()
    for lang in ("de", "en"):
        assert_vocab_readable_by_opennmt(out / f"vocab.{lang}")


@pytest.mark.integration  # rebuilds a corpus: slower
def test_an_interrupted_run_leaves_nothing_that_looks_finished(multi30k_out, tmp_path, monkeypatch):
    import data_prep.pipeline as prepare_module

    out = tmp_path / "m"
    calls = {"n": 0}
    original = prepare_module.write_lines

    def dying_write_lines(path, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            def rows_then_kill():
                for i, row in enumerate(rows):
                    if i == 100:
                        raise KeyboardInterrupt
                    yield row
            return original(path, rows_then_kill())
        return original(path, rows)

    monkeypatch.setattr(prepare_module, "write_lines", dying_write_lines)
    with pytest.raises(KeyboardInterrupt):
        prep("multi30k", "--out", out, "--source", shared_data() / "multi30k")
    assert not (out / "manifest.json").exists()
    assert not (out / "tok" / "stamp.json").exists()
    assert not list(out.rglob("*.tmp-*"))
    assert not (out / "tok" / "valid.de").exists()  # the file being written when killed
    monkeypatch.setattr(prepare_module, "write_lines", original)
    prep("multi30k", "--out", out, "--source", shared_data() / "multi30k")
    for name in ("train.de", "valid.de", "test.en", "test.ref.detok.en", "vocab.en"):
        assert (out / name).read_bytes() == (multi30k_out / name).read_bytes(), name


def forget_checksums(monkeypatch):
    import data_prep.sources as sources

    for name in list(sources.MULTI30K.sha256):
        monkeypatch.delitem(sources.MULTI30K.sha256, name)


def _multi30k_copy(tmp_path, edit):
    source = tmp_path / "m30k-src"
    shutil.copytree(shared_data() / "multi30k", source)
    edit(source)
    return source


def _rewrite_gz(path, transform):
    data = gzip.open(path, "rb").read()
    with gzip.open(path, "wb") as handle:
        handle.write(transform(data))


def test_mismatched_line_counts_name_both_files(tmp_path, capsys, monkeypatch):
    forget_checksums(monkeypatch)  # the edited copy has other checksums
    source = _multi30k_copy(tmp_path, lambda s: _rewrite_gz(s / "val.en.gz", lambda d: d.split(b"\n", 1)[1]))
    with pytest.raises(SystemExit) as exit_info:
        prep("multi30k", "--out", tmp_path / "out", "--source", source)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "val.de.gz has 1014 lines" in err and "val.en.gz has 1013" in err


def test_undecodable_utf8_names_file_and_line(tmp_path, capsys, monkeypatch):
    forget_checksums(monkeypatch)
    def corrupt(data):
        rows = data.split(b"\n")
        rows[4] = b"kaputt \xff\xfe"
        return b"\n".join(rows)
    source = _multi30k_copy(tmp_path, lambda s: _rewrite_gz(s / "train.de.gz", corrupt))
    with pytest.raises(SystemExit):
        prep("multi30k", "--out", tmp_path / "out", "--source", source)
    assert "train.de.gz, line 5: not valid UTF-8" in capsys.readouterr().err


def test_a_known_checksum_that_differs_is_refused(tmp_path, capsys):
    source = _multi30k_copy(tmp_path, lambda s: _rewrite_gz(s / "val.de.gz", lambda d: d + b"extra\n"))
    with pytest.raises(SystemExit):
        prep("multi30k", "--out", tmp_path / "out", "--source", source)
    err = capsys.readouterr().err
    assert "val.de.gz from" in err and "expected f0cba2f9" in err


def test_archive_errors(europarl_text, tmp_path, capsys):
    de, en = europarl_text
    for case, kwargs, message in (
        ("missing", {"members": ["training/europarl-v7.de-en.de"]}, "missing members training/europarl-v7.de-en.en"),
        ("unsafe", {"unsafe": True}, "refusing an archive with members outside its directory: ../evil.txt"),
    ):
        source = tmp_path / case
        source.mkdir()
        europarl_archive(source / "training-parallel-europarl-v7.tgz", de, en, **kwargs)
        with pytest.raises(SystemExit):
            prep("wmt13", "--out", tmp_path / f"out-{case}", "--source", source)
        assert message in capsys.readouterr().err
        assert not (tmp_path.parent / "evil.txt").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "training-parallel-europarl-v7.tgz").write_bytes(b"not a tar")
    with pytest.raises(SystemExit):
        prep("wmt13", "--out", tmp_path / "out-broken", "--source", broken)
    assert "not a readable tar archive" in capsys.readouterr().err
    # a download cut short: a valid gzip/tar start, then nothing
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    europarl_archive(truncated / "whole.tgz", de, en)
    data = (truncated / "whole.tgz").read_bytes()
    (truncated / "training-parallel-europarl-v7.tgz").write_bytes(data[: len(data) // 2])
    (truncated / "whole.tgz").unlink()
    with pytest.raises(SystemExit):
        prep("wmt13", "--out", tmp_path / "out-truncated", "--source", truncated)
    err = capsys.readouterr().err
    assert "not a readable tar archive" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["multi30k", "--out", "X", "--source", "/no/such/dir"], "--source /no/such/dir: no such file or directory"),
        (["multi30k", "--out", "X", "--valid-size", "10"], "multi30k keeps its own validation split"),
        (["multi30k", "--out", "X", "--vocab-size", "100"], "--vocab-size applies to --subword sentencepiece"),
        (["ope", "--out", "X", "--max-length", "-1"], "expected an integer >= 0, got '-1'"),
        (["europarl", "--out", "X"], "invalid choice: 'europarl'"),
        (["multi30k", "--out", "FILE"], "is a file, expected a folder"),
    ],
)
def test_bad_arguments(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = [a.replace("X", str(tmp_path / "out")).replace("FILE", str(tmp_path / "file")) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        data_prep_main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_ope_missing_train_files_are_named(tmp_path, capsys):
    source = tmp_path / "only-test"
    shutil.copytree(shared_data() / "ope", source)
    with pytest.raises(SystemExit):
        prep("ope", "--out", tmp_path / "out", "--source", source)
    assert "de-train-clean.200K.txt is missing there" in capsys.readouterr().err


def test_help_explains_each_option():
    result = subprocess.run([sys.executable, "-m", "data_prep", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--out", "--source", "--subword", "--vocab-size", "--valid-size", "--max-length", "wmt13"):
        assert option in result.stdout


def test_prepare_is_usable_from_python(multi30k_out):
    from data_prep.pipeline import Options

    manifest = prepare_corpus(Options("multi30k", str(shared_data() / "multi30k")), multi30k_out)
    assert manifest["outputs"]["valid.en"] == 1014


@pytest.fixture
def http_server():
    """A loopback HTTP server over the shared Multi30k copy; ``truncate`` cuts bodies short."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        truncate = False

        def log_message(self, *args):
            pass

        def copyfile(self, source, outputfile):
            data = source.read()
            outputfile.write(data[: len(data) // 2] if Handler.truncate else data)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(shared_data() / "multi30k"))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, Handler
    server.shutdown()
    server.server_close()


def test_download_over_http(http_server, multi30k_out, tmp_path, capsys):
    server, _ = http_server
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    out = tmp_path / "m"
    prep("multi30k", "--out", out, "--source", url)
    assert "downloading train.de.gz" in capsys.readouterr().err
    assert (out / "train.en").read_bytes() == (multi30k_out / "train.en").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["source"] == url


def test_a_truncated_download_is_an_error_and_leaves_no_file(http_server, tmp_path, capsys):
    server, handler = http_server
    handler.truncate = True
    out = tmp_path / "m"
    with pytest.raises(SystemExit):
        prep("multi30k", "--out", out, "--source", f"http://127.0.0.1:{server.server_address[1]}/")
    err = capsys.readouterr().err
    assert "train.de.gz: received 318522 bytes, expected 637044" in err, err
    assert not list((out / "download").glob("*.gz"))
