"""How a model translates, stated once: :class:`Decoding`, built from the options of every command (``-beam_size``,
``-n_best``, ... as ``onmt_translate`` names them), the server's ``opt`` and the evaluation worker, checked once,
and passed whole to every engine (OpenNMT-py's translator, ONNX, native; the C++ engine binds it as one struct).

A new decoding option is a field here (its default and check; OpenNMT-py's translator gets it by name) and,
where it forbids tokens, a line of :meth:`Decoding.step_bans` or :meth:`Decoding.hypothesis_bans`, which the
search (:mod:`onmt_lma.deploy.search`) applies; in C++ the same field and bans in ``csrc/search.h``'s
``Decoding``.
"""

import dataclasses
import enum

from onmt_lma.base.errors import UserError


class DecodingError(UserError, ValueError):
    """A decoding option outside what it can be; the message names the option and what it takes."""


class LengthPenalty(enum.Enum):
    """OpenNMT-py's ``-length_penalty``: a finished hypothesis's score is its log-probability divided by it."""

    NONE = "none"
    AVG = "avg"  # length ** alpha
    WU = "wu"  # ((5 + length) / 6) ** alpha (Wu et al. 2016)

    def __call__(self, length, alpha):
        if self is LengthPenalty.AVG:
            return length ** alpha
        if self is LengthPenalty.WU:
            return ((5 + length) / 6.0) ** alpha
        return 1.0


@dataclasses.dataclass(frozen=True)
class Decoding:
    """OpenNMT-py's beam search options of the same names, with its defaults (``onmt_translate -h``)."""

    beam_size: int = 5
    n_best: int = 1
    max_length: int = 250
    min_length: int = 0
    #: at most longest source x this + 5 tokens (OpenNMT-py's cap; 0: ``max_length`` only)
    max_length_ratio: float = 1.25
    length_penalty: LengthPenalty = LengthPenalty.AVG
    alpha: float = 1.0
    ban_unk_token: bool = False
    #: no hypothesis repeats an n-gram of this many tokens (0: any may; OpenNMT-py's 1 bans nothing, ours
    #: every token already in the hypothesis)
    block_ngram_repeat: int = 0

    def __post_init__(self):
        if isinstance(self.length_penalty, str):
            try:
                object.__setattr__(self, "length_penalty", LengthPenalty(self.length_penalty))
            except ValueError:
                raise DecodingError(f"-length_penalty {self.length_penalty!r}: expected one of "
                                    f"{', '.join(p.value for p in LengthPenalty)}") from None
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.type
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, field.name, float(value))
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise DecodingError(f"-{field.name} {value!r}: expected {_EXPECTED[kind]}")
        checks = [("beam_size", self.beam_size >= 1, "an integer >= 1"),
                  ("n_best", 1 <= self.n_best <= self.beam_size, f"an integer from 1 to -beam_size {self.beam_size}"),
                  ("max_length", self.max_length >= 1, "an integer >= 1"),
                  ("min_length", 0 <= self.min_length <= self.max_length,
                   f"an integer from 0 to -max_length {self.max_length}"),
                  ("max_length_ratio", self.max_length_ratio >= 0, "a number >= 0"),
                  ("alpha", self.alpha >= 0, "a number >= 0"),
                  ("block_ngram_repeat", self.block_ngram_repeat >= 0, "an integer >= 0 (0: no ban)")]
        for name, holds, expected in checks:
            if not holds:
                raise DecodingError(f"-{name} {getattr(self, name)!r}: expected {expected}")

    @classmethod
    def from_options(cls, opt):
        """The value of a command's parsed options (any namespace with the attributes of the same names)."""
        return cls(**{field.name: getattr(opt, field.name) for field in dataclasses.fields(cls)
                      if hasattr(opt, field.name)})

    @classmethod
    def from_dict(cls, values, where, defaults=None):
        """The value of a JSON object (the server's ``opt``, the evaluation worker's argument) over ``defaults``;
        an unknown key is an error naming ``where``."""
        names = [field.name for field in dataclasses.fields(cls)]
        if not isinstance(values, dict):
            raise DecodingError(f"{where}: expected an object of decoding options ({', '.join(names)})")
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise DecodingError(f"{where}: unknown decoding option {unknown[0]!r} (known: {', '.join(names)})")
        try:
            return dataclasses.replace(defaults or cls(), **values)
        except DecodingError as error:
            raise DecodingError(f"{where}: {error}") from None

    def as_dict(self):
        """JSON-ready: the penalty by its name."""
        return {**dataclasses.asdict(self), "length_penalty": self.length_penalty.value}

    def onmt_args(self):
        """The same value as ``onmt_translate`` arguments (OpenNMT-py's translator takes them all)."""
        args = []
        for name, value in self.as_dict().items():
            if isinstance(value, bool):
                args += [f"-{name}"] * value
            else:
                args += [f"-{name}", str(value)]
        return args

    def step_bans(self, length, special):
        """The ids forbidden to every hypothesis by the step that makes it ``length`` tokens long (its start
        token included): the end token up to ``min_length``, the unknown token with ``ban_unk_token``."""
        return [special["eos"]] * (length <= self.min_length) + [special["unk"]] * self.ban_unk_token

    def hypothesis_bans(self, hypothesis):
        """The ids forbidden to one ``hypothesis`` (its tokens so far): those that would end an n-gram it holds
        already, n = ``block_ngram_repeat``."""
        n = self.block_ngram_repeat
        if n == 0 or len(hypothesis) < n - 1:
            return []
        prefix = tuple(hypothesis[len(hypothesis) - n + 1:])
        return sorted({hypothesis[i + n - 1] for i in range(len(hypothesis) - n + 1)
                       if tuple(hypothesis[i:i + n - 1]) == prefix})

    def max_steps(self, longest_source, positions):
        """The tokens a batch whose longest source has ``longest_source`` tokens may decode: OpenNMT-py's
        ``min(max_length, longest x max_length_ratio + 5)``, within a position table of ``positions`` rows."""
        cap = min(self.max_length, positions - 1)
        if self.max_length_ratio > 0:
            cap = int(min(cap, longest_source * self.max_length_ratio + 5))
        return cap


def add_options(group):
    """:class:`Decoding`'s fields as ``onmt_translate``'s options of the same names and defaults, for a command
    that does not take all of ``onmt_translate``'s (the server); :meth:`Decoding.from_options` reads them."""
    for field in dataclasses.fields(Decoding):
        flags = (f"--{field.name}", f"-{field.name}")
        if field.type is bool:
            group.add_argument(*flags, action="store_true")
        elif issubclass(field.type, enum.Enum):
            group.add_argument(*flags, choices=[p.value for p in field.type], default=field.default.value)
        else:
            group.add_argument(*flags, type=field.type, default=field.default)


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false",
             LengthPenalty: "one of " + ", ".join(p.value for p in LengthPenalty)}
