"""Nothing lost, nothing run: the deploy commands under malicious files, outputs aimed at their inputs, and
hand-edited or damaged exports.  Every case asserts the one-line message and that every input is unchanged
(sha256 before and after); the malicious-pickle cases run with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` and
check that the pickle's code did not run."""

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from onmt_lma.base.files import sha256_of

from conftest import load, run

pytestmark = pytest.mark.integration

UNSAFE = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


class RunsCode:
    """Pickled, loading it would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def digests(*paths):
    """sha256 of every file under ``paths`` (files or folders), by path."""
    found = {}
    for path in map(Path, paths):
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            found[str(file)] = sha256_of(file)
    return found


def fails(command, *args, env=None):
    result = run(command, *args, expect_ok=False, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith(f"{command}: error:")]
    assert len(error) == 1, result.stderr[-2000:]
    return error[0]


@pytest.fixture(scope="module")
def exported(lma_student, tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety") / "export"
    run("onmt_lma_export", "-model", lma_student, "-output", folder)
    return folder


@pytest.fixture(scope="module")
def relu_student(teacher):
    return teacher


# --------------------------------------------------------------------------- #
# 1. A checkpoint with a malicious pickle, the safe loader switched off by the environment
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("command, args", [
    ("onmt_lma_translate", ["-src", "{src}", "-output", "{tmp}/hyp.txt"]),
    ("onmt_lma_export", ["-output", "{tmp}/export"]),
    ("onmt_lma_quantize", ["-output", "{tmp}/q.pt"]),
    ("onmt_lma_evaluate", ["-corpus", "{corpus}"]),
    ("onmt_lma_convert_ct2", ["-output", "{tmp}/ct2"]),
])
def test_a_malicious_checkpoint_is_refused_and_its_code_never_runs(command, args, lma_student, corpus_dir, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "student.pt"
    checkpoint = load(lma_student)
    checkpoint["opt"] = RunsCode(marker)
    torch.save(checkpoint, evil)
    before = digests(evil, corpus_dir)
    values = {"src": corpus_dir / "test.de", "tmp": tmp_path, "corpus": corpus_dir}
    message = fails(command, "-model", evil, *[a.format(**values) for a in args], env=UNSAFE)
    assert f"refusing to load OpenNMT-py checkpoint '{evil}': it holds posix.system" in message
    assert "do not use it" in message and "weights_only" not in message
    assert not marker.exists(), f"{command} ran the checkpoint's code"
    assert digests(evil, corpus_dir) == before
    assert not [p for p in tmp_path.iterdir() if p not in (evil,)], "an output was written"


def test_a_malicious_native_weight_file_is_refused_even_with_a_matching_manifest(exported, corpus_dir, tmp_path):
    folder = shutil.copytree(exported, tmp_path / "export")
    marker = tmp_path / "code-ran"
    torch.save({"activation": "lma", "config": {}, "weights": RunsCode(marker)}, folder / "native.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["native.pt"] = sha256_of(folder / "native.pt")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    before = digests(folder)
    message = fails("onmt_lma_translate", "-engine", "native", "-model", folder, "-src", corpus_dir / "test.de",
                    "-output", tmp_path / "hyp.txt", "-precision", "int8", env=UNSAFE)  # int8: the torch engine's file
    assert f"refusing to load native engine weight file '{folder / 'native.pt'}': it holds posix.system" in message
    assert not marker.exists() and digests(folder) == before and not (tmp_path / "hyp.txt").exists()


# --------------------------------------------------------------------------- #
# 2. Translations written over the model
# --------------------------------------------------------------------------- #
def test_translation_never_writes_over_its_checkpoint_or_export(lma_student, exported, corpus_dir, tmp_path):
    checkpoint = shutil.copy(lma_student, tmp_path / "m.pt")
    before = digests(checkpoint, exported)
    message = fails("onmt_lma_translate", "-model", checkpoint, "-src", corpus_dir / "test.de", "-output", checkpoint)
    assert message.endswith(f"-output {checkpoint} is the -model {checkpoint}: it would be overwritten; give another "
                            "path")
    message = fails("onmt_lma_translate", "-engine", "native", "-model", exported, "-src", corpus_dir / "test.de",
                    "-output", exported / "native.pt")
    assert f"-output {exported / 'native.pt'} is inside the -model folder {exported}" in message
    assert digests(checkpoint, exported) == before


# --------------------------------------------------------------------------- #
# 4. Exports into folders that are not exports, and interrupted re-exports
# --------------------------------------------------------------------------- #
def test_export_never_writes_into_another_kind_of_folder(lma_student, corpus_dir, tmp_path):
    before = digests(corpus_dir, lma_student)
    message = fails("onmt_lma_export", "-model", lma_student, "-output", corpus_dir)
    assert message.endswith(f"-output {corpus_dir} exists and is not an export folder; refusing to replace it (give a "
                            "new or empty folder)")
    holder = tmp_path / "holder"
    holder.mkdir()
    inside = shutil.copy(lma_student, holder / "native.pt")
    message = fails("onmt_lma_export", "-model", inside, "-output", holder)
    assert f"-output {holder} holds the -model {inside}: replacing it would delete that input" in message
    assert inside.is_file() and digests(corpus_dir, lma_student) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holder"] and os.listdir(holder) == ["native.pt"]


def test_a_re_export_needs_force_and_an_interrupted_one_leaves_the_old_export(lma_student, exported, tmp_path):
    from onmt_lma.deploy import export as exporter

    folder = shutil.copytree(exported, tmp_path / "export")
    before = digests(folder)
    message = fails("onmt_lma_export", "-model", lma_student, "-output", folder)
    assert message.endswith(f"-output {folder} exists (an export); give -force to replace it")

    def killed(*args):
        raise KeyboardInterrupt  # as a kill during the write: the block never completes

    original = exporter._write_native
    exporter._write_native = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            exporter.export(lma_student, folder, force=True)
    finally:
        exporter._write_native = original
    assert digests(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    run("onmt_lma_export", "-model", lma_student, "-output", folder, "-force")
    source = tmp_path / "src.txt"
    source.write_text("\n")  # nothing to translate: the export is still opened and checked
    run("onmt_lma_translate", "-engine", "native", "-model", folder, "-src", source, "-output", tmp_path / "h.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "h.txt", "src.txt"]


# --------------------------------------------------------------------------- #
# 5. CTranslate2: -force never deletes an input or another kind of folder
# --------------------------------------------------------------------------- #
def test_convert_ct2_force_never_deletes_its_input_or_a_foreign_folder(relu_student, corpus_dir, tmp_path):
    holder = tmp_path / "holder"
    holder.mkdir()
    inside = shutil.copy(relu_student, holder / "teacher.pt")
    before = digests(holder, corpus_dir)
    message = fails("onmt_lma_convert_ct2", "-model", inside, "-output", holder, "-force")
    assert f"-output {holder} holds the -model {inside}: replacing it would delete that input" in message
    message = fails("onmt_lma_convert_ct2", "-model", inside, "-output", corpus_dir, "-force")
    assert message.endswith(f"-output {corpus_dir} exists and is not a CTranslate2 model folder; refusing to replace it"
                            " (give a new or empty folder)")
    assert digests(holder, corpus_dir) == before
    out = tmp_path / "ct2"
    run("onmt_lma_convert_ct2", "-model", inside, "-output", out)
    assert fails("onmt_lma_convert_ct2", "-model", inside, "-output", out).endswith(
        f"-output {out} exists (a CTranslate2 model); give -force to replace it")
    run("onmt_lma_convert_ct2", "-model", inside, "-output", out, "-force")
    assert (out / "model.bin").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "holder"]


# --------------------------------------------------------------------------- #
# The weak cases: one line each, nothing changed
# --------------------------------------------------------------------------- #
def edited(exported, tmp_path, change):
    folder = shutil.copytree(exported, tmp_path / "edited")
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    result = change(manifest, folder)
    manifest_path.write_text(result if isinstance(result, str) else json.dumps(manifest))
    return folder


@pytest.mark.parametrize("change, expected", [
    (lambda m, f: json.dumps(m)[:200], "manifest.json: not a readable manifest (JSONDecodeError"),
    (lambda m, f: "[1, 2]", "manifest.json: expected a JSON object, got list"),
    (lambda m, f: m.update(layers="2"), "manifest.json: 'layers' is '2', expected int"),
    (lambda m, f: m["special"].update(eos=-3), "special id 'eos' is -3, expected an integer >= 0"),
    (lambda m, f: m["files"].update({"../../outside.json": "0" * 64}), "lists the file '../../outside.json', which is "
                                                                       "not a file of this folder"),
    (lambda m, f: m["files"].update({"/etc/passwd": "0" * 64}), "lists the file '/etc/passwd'"),
    (lambda m, f: m["special"].update(eos=10 ** 6), "special id eos 1000000 is outside its vocabulary"),
])
def test_a_hand_edited_or_truncated_manifest_is_one_line(exported, corpus_dir, tmp_path, change, expected):
    folder = edited(exported, tmp_path, change)
    before = digests(folder)
    for engine in ("native", "onnx"):
        message = fails("onmt_lma_translate", "-engine", engine, "-model", folder, "-src", corpus_dir / "test.de",
                        "-output", tmp_path / "hyp.txt")
        assert expected in message, message
    assert digests(folder) == before and not (tmp_path / "hyp.txt").exists()


def test_a_damaged_native_weight_file_is_one_line(exported, corpus_dir, tmp_path):
    """The torch-free runtime's safetensors file (float32) and the torch engine's (int8), each cut short."""
    for name, extra, expected in (("native.safetensors", [], "not a native runtime weight file"),
                                  ("native.pt", ["-precision", "int8"], "is not a readable native engine weight "
                                                                        "file (damaged or truncated?)")):
        folder = shutil.copytree(exported, tmp_path / name)
        weights = folder / name
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"][name] = sha256_of(weights)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        message = fails("onmt_lma_translate", "-engine", "native", "-model", folder, "-src", corpus_dir / "test.de",
                        "-output", tmp_path / "hyp.txt", *extra)
        assert str(weights) in message and expected in message, message


def test_batch_size_zero_is_one_line(lma_student, exported, corpus_dir, tmp_path):
    for model, engine in ((lma_student, "pytorch"), (exported, "native")):
        message = fails("onmt_lma_translate", "-engine", engine, "-model", model, "-src", corpus_dir / "test.de",
                        "-output", tmp_path / "hyp.txt", "-batch_size", "0")
        assert message.endswith("-batch_size 0: expected an integer >= 1")


def test_a_quantization_larger_than_its_input_says_so(lma_student, tmp_path):
    released = tmp_path / "released.pt"  # float16, no optimizer: a bucket's float32 minimum and range outweigh it
    run("onmt_lma_average_models", "-models", lma_student, "-output", released, "-release")
    before = digests(released)
    result = run("onmt_lma_quantize", "-model", released, "-output", tmp_path / "q8.pt", "-bits", "8",
                 "-bucket", "2")
    assert "and larger than its input" in result.stderr and "keep the input for deployment" in result.stderr
    assert digests(released) == before


def test_a_quantization_aware_checkpoint_exported_as_it_is_says_what_to_run(lma_student, tmp_path):
    checkpoint = load(lma_student)
    checkpoint["opt"] = argparse.Namespace(**{**vars(checkpoint["opt"]), "quant_bits": 4, "quant_bucket": 64})
    qat = tmp_path / "qat.pt"
    torch.save(checkpoint, qat)
    message = fails("onmt_lma_export", "-model", qat, "-output", tmp_path / "export")
    assert f"is a -quant_bits 4 student" in message and f"run onmt_lma_quantize -model {qat} -output CK.q4.pt" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qat.pt"]
