"""Corpus preparation for onmt-lma: Ope, WMT13 Europarl De-En and Multi30k.

``python -m data_prep {ope,wmt13,multi30k} --out DIR`` fetches a corpus (or
takes a local copy), splits, normalizes and tokenizes it as the paper did, and
writes what OpenNMT-py trains on; see ``python -m data_prep --help``.
"""

from data_prep.pipeline import Options, prepare
from data_prep.sources import CORPORA
from data_prep.text import DataPrepError

__all__ = ["CORPORA", "DataPrepError", "Options", "prepare"]
