"""Corpus preparation for onmt-lma: Ope, WMT13 Europarl De-En and Multi30k.

``python -m data_prep {ope,wmt13,multi30k} --out DIR`` fetches a corpus (or
takes a local copy), splits, normalizes and tokenizes it as the paper did, and
writes what OpenNMT-py trains on; see ``python -m data_prep --help``.  :mod:`.pipeline` prepares,
:mod:`.sources` fetches, :mod:`.text` holds the text steps (also the evaluation's and the server's).
"""
