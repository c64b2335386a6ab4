"""One YAML for every onmt_lma_* command (as OpenNMT-py's quickstart): keys of other commands are ignored,
a key of no command is an error naming the file and the nearest option; the command line takes only the
command's own options."""

import re
import tomllib

import pytest

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.bin.parser import command_parser, COMMAND_PARSERS, shared_config_keys

from conftest import REPO

#: the least each command needs besides the YAML
REQUIRED = {
    "onmt_lma_train": [],
    "onmt_lma_build_vocab": ["-n_sample", "-1"],
    "onmt_lma_translate": ["-model", "m.pt", "-src", "test.de"],
    "onmt_lma_distill_data": ["-model", "m.pt", "-src", "train.de"],
    "onmt_lma_evaluate": ["-model", "m.pt", "-corpus", "data/multi30k"],
    "onmt_lma_average_models": ["-models", "a.pt", "b.pt", "-output", "avg.pt"],
    "onmt_lma_recalibrate": ["-model", "avg.pt", "-src", "train.de", "-tgt", "train.en", "-output", "r.pt"],
    "onmt_lma_teacher_cache": ["-model", "teacher.pt", "-out", "cache"],
    "onmt_lma_quantize": ["-model", "m.pt", "-output", "q.pt"],
    "onmt_lma_export": ["-model", "m.pt", "-output", "onnx"],
    "onmt_lma_convert_ct2": ["-model", "m.pt", "-output", "ct2"],
    "onmt_lma_server": ["-model", "m.pt"],
}
#: an own option of each command, misspelled, and what it should have been
MISSPELLED = {
    "onmt_lma_train": ("-lma_segmnts", "-lma_segments"),
    "onmt_lma_build_vocab": ("-n_sampel", "-n_sample"),
    "onmt_lma_translate": ("-beam_sise", "-beam_size"),
    "onmt_lma_distill_data": ("-chunk_line", "-chunk_lines"),
    "onmt_lma_evaluate": ("-ref_tk", "-ref_tok"),
    "onmt_lma_average_models": ("-outptu", "-output"),
    "onmt_lma_recalibrate": ("-max_sentence", "-max_sentences"),
    "onmt_lma_teacher_cache": ("-topK", "-topk"),
    "onmt_lma_quantize": ("-embedings", "-embeddings"),
    "onmt_lma_export": ("-int9", "-int8"),
    "onmt_lma_convert_ct2": ("-quantisation", "-quantization"),
    "onmt_lma_server": ("-max_batch_sise", "-max_batch_size"),
}


def readme_example_yaml():
    """The README's example config (the first yaml block after '## Example')."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.search(r"## Example.*?```yaml\n(.*?)```", text, re.S)[1]


@pytest.fixture
def example(tmp_path):
    path = tmp_path / "student.yaml"
    path.write_text(readme_example_yaml(), encoding="utf-8")
    return path


def test_the_command_list_is_the_installed_commands():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(COMMAND_PARSERS) == set(scripts)
    assert REQUIRED.keys() == MISSPELLED.keys() == COMMAND_PARSERS.keys()


@pytest.mark.parametrize("command", COMMAND_PARSERS)
def test_every_command_reads_the_readme_example_yaml(command, example):
    opt = command_parser(command).parse_args(["-config", str(example), *REQUIRED[command]])
    if command == "onmt_lma_train":  # its own keys are taken
        assert (opt.hidden_size, opt.pos_ffn_activation_fn, opt.lma_segments) == (64, "lma", 8)
    if command == "onmt_lma_translate":
        assert opt.lma_segments == 8 and not hasattr(opt, "hidden_size")  # a training key: ignored
    if command == "onmt_lma_build_vocab":
        assert opt.src_vocab.endswith("vocab.de") and not hasattr(opt, "lma_segments")


@pytest.mark.parametrize("command", COMMAND_PARSERS)
def test_a_misspelled_yaml_key_names_the_file_and_the_nearest_option(command, example, capsys):
    example.write_text(example.read_text() + "lma_segmnts: 8\n")
    with pytest.raises(SystemExit) as stop:
        command_parser(command).parse_args(["-config", str(example), *REQUIRED[command]])
    assert stop.value.code == 2
    assert f"unknown option 'lma_segmnts' in {example}; did you mean 'lma_segments'?" in capsys.readouterr().err


def test_a_yaml_key_of_no_command_and_nothing_near_says_so(example, capsys):
    example.write_text(example.read_text() + "zzzz_qqqq: 1\n")
    with pytest.raises(SystemExit):
        command_parser("onmt_lma_train").parse_args(["-config", str(example)])
    assert "unknown option 'zzzz_qqqq'" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMAND_PARSERS)
def test_the_command_line_takes_only_the_command_s_own_options(command, example, capsys):
    wrong, right = MISSPELLED[command]
    with pytest.raises(SystemExit) as stop:
        command_parser(command).parse_args(["-config", str(example), *REQUIRED[command], wrong, "1"])
    assert stop.value.code == 2
    assert f"unrecognized arguments: {wrong} 1; did you mean {right}?" in capsys.readouterr().err
    # another command's option is not this one's on the command line, though it may be in the YAML
    other = "-beam_size" if command in ("onmt_lma_train", "onmt_lma_teacher_cache") else "-hidden_size"
    assert other.lstrip("-") in shared_config_keys()
    with pytest.raises(SystemExit):
        command_parser(command).parse_args(["-config", str(example), *REQUIRED[command], other, "5"])
    assert f"unrecognized arguments: {other} 5" in capsys.readouterr().err


def test_the_light_parsers_know_the_same_keys_as_the_full_ones():
    """bin/config_keys.json (what the commands that run exports read without OpenNMT-py) is every command's
    keys; regenerate it with: python -c "import json; from onmt_lma.bin.parser import shared_config_keys;
    json.dump(sorted(shared_config_keys()), open('onmt_lma/bin/config_keys.json', 'w'), indent=0)"."""
    from onmt_lma.bin.light import known_config_keys

    assert known_config_keys() == shared_config_keys()
