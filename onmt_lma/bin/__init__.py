"""Command-line entry points: ``onmt_lma_train``, ``onmt_lma_translate``, ``onmt_lma_build_vocab``."""
