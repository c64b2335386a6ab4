"""The one decoding value (onmt_lma/deploy/decoding.py): OpenNMT-py's defaults and option names, its checks,
and the same value from every command, the server's conf.json and the evaluation worker."""

import dataclasses
import json
import subprocess

import pytest

from onmt_lma.deploy.decoding import Decoding, DecodingError, LengthPenalty, add_options
from onmt_lma.deploy.pytorch import translation_parser
from onmt_lma.evaluation.measure import Translation

from conftest import BIN

CHANGED = Decoding(beam_size=4, n_best=2, max_length=60, min_length=2, max_length_ratio=2.5,
                   length_penalty=LengthPenalty.WU, alpha=0.6, ban_unk_token=True, block_ngram_repeat=3)


def onmt_translate(*args):
    return translation_parser().parse_args(["-model", "m.pt", "-src", "s.de", *map(str, args)])


def test_the_defaults_are_onmt_translates():
    assert Decoding.from_options(onmt_translate()) == Decoding()


def test_onmt_translates_parser_reads_the_value_back_whole():
    assert Decoding.from_options(onmt_translate(*CHANGED.onmt_args())) == CHANGED
    assert CHANGED != Decoding() and all(getattr(CHANGED, f.name) != getattr(Decoding(), f.name)
                                         for f in dataclasses.fields(Decoding))


def test_the_commands_own_parser_has_every_field_with_its_default():
    import argparse

    parser = argparse.ArgumentParser()
    add_options(parser)
    assert Decoding.from_options(parser.parse_args([])) == Decoding()
    assert Decoding.from_options(parser.parse_args(CHANGED.onmt_args())) == CHANGED


@pytest.mark.parametrize("values, message", [
    ({"beam_size": 0}, r"-beam_size 0: expected an integer >= 1"),
    ({"n_best": 6}, r"-n_best 6: expected an integer from 1 to -beam_size 5"),
    ({"max_length": 0}, r"-max_length 0: expected an integer >= 1"),
    ({"min_length": 300}, r"-min_length 300: expected an integer from 0 to -max_length 250"),
    ({"max_length_ratio": -1}, r"-max_length_ratio -1.0: expected a number >= 0"),
    ({"length_penalty": "long"}, r"-length_penalty 'long': expected one of none, avg, wu"),
    ({"alpha": "1"}, r"-alpha '1': expected a number"),
    ({"beam_size": True}, r"-beam_size True: expected an integer"),
    ({"ban_unk_token": 1}, r"-ban_unk_token 1: expected true or false"),
    ({"block_ngram_repeat": -2}, r"-block_ngram_repeat -2: expected an integer >= 0 \(0: no ban\)"),
])
def test_a_bad_value_names_its_option_and_what_it_takes(values, message):
    with pytest.raises(DecodingError, match=message):
        Decoding(**values)


def test_a_json_object_is_checked_and_names_where_it_came_from():
    assert Decoding.from_dict({"beam_size": 2, "length_penalty": "none"}, "opt") == \
        Decoding(beam_size=2, length_penalty=LengthPenalty.NONE)
    assert Decoding.from_dict({"alpha": 2}, "opt", defaults=CHANGED) == dataclasses.replace(CHANGED, alpha=2.0)
    with pytest.raises(DecodingError, match=r"model 3: unknown decoding option 'beam' \(known: beam_size, n_best"):
        Decoding.from_dict({"beam": 5}, "model 3")
    with pytest.raises(DecodingError, match=r"model 3: -n_best 9: expected an integer from 1 to -beam_size 5"):
        Decoding.from_dict({"n_best": 9}, "model 3")
    with pytest.raises(DecodingError, match="expected an object"):
        Decoding.from_dict([5], "model 3")


def test_the_evaluation_worker_gets_the_value_whole():
    translation = Translation("native", True, -1, 32, CHANGED)
    assert Translation.from_json(translation.to_json()) == translation
    assert json.loads(translation.to_json())["decoding"]["length_penalty"] == "wu"


def test_the_length_cap_is_onmt_pys():
    assert Decoding().max_steps(10, 1024) == int(10 * 1.25 + 5)
    assert Decoding(max_length=8).max_steps(10, 1024) == 8
    assert Decoding(max_length_ratio=0).max_steps(10, 1024) == 250
    assert Decoding(max_length_ratio=0).max_steps(10, 100) == 99  # the position table's last row
    assert LengthPenalty.WU(7, 0.5) == pytest.approx(((5 + 7) / 6) ** 0.5)
    assert LengthPenalty.AVG(7, 2.0) == 49 and LengthPenalty.NONE(7, 2.0) == 1


def test_the_server_takes_the_same_options_and_conf_json_overrides_them(tmp_path):
    from onmt_lma.bin import server

    opt = server.get_parser().parse_args(["-model", "m.pt", *CHANGED.onmt_args(), "-threads", "2"])
    (spec,) = server.model_specs(opt)
    assert spec.decoding == CHANGED and spec.threads == 2
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"models": [{"id": 1, "model": "m.pt", "opt": {"beam_size": 3, "threads": 1}}]}))
    (spec,) = server.model_specs(server.get_parser().parse_args(["-models_conf", str(conf), "-n_best", "2"]))
    assert spec.decoding == Decoding(beam_size=3, n_best=2) and spec.threads == 1
    conf.write_text(json.dumps({"models": [{"id": 1, "model": "m.pt", "opt": {"beam_size": 1, "n_best": 2}}]}))
    with pytest.raises(server.ServerConfigError, match=r"model 1: opt: -n_best 2: expected an integer from 1 to "
                                                       r"-beam_size 1"):
        server.model_specs(server.get_parser().parse_args(["-models_conf", str(conf)]))


def test_translate_help_prints_no_warning():
    """OpenNMT-py's FutureWarnings on import are silenced where it is imported; a fresh process shows it."""
    result = subprocess.run([str(BIN / "onmt_lma_translate"), "-h"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "-beam_size" in result.stdout
    assert result.stderr == "", result.stderr[-2000:]


def test_a_hypothesis_is_banned_exactly_the_tokens_that_would_repeat_one_of_its_ngrams():
    """Against the definition, on random hypotheses: t is banned iff hypothesis + [t] ends with an n-gram
    it held before."""
    import random

    rng = random.Random(3)
    for _ in range(300):
        n, hypothesis = rng.randint(0, 4), [rng.randint(0, 5) for _ in range(rng.randint(0, 12))]
        expected = [t for t in range(6) if n and len(hypothesis) + 1 >= n and
                    tuple((hypothesis + [t])[-n:]) in {tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1)}]
        assert Decoding(block_ngram_repeat=n).hypothesis_bans(hypothesis) == expected, (n, hypothesis)
    special = {"eos": 3, "unk": 0}
    assert Decoding(min_length=2, ban_unk_token=True).step_bans(2, special) == [3, 0]
    assert Decoding(min_length=2).step_bans(3, special) == []
