"""The studies' own steps (probes, rule checks, release tables, engine profiles): each is a step of its study's
plan (``studies/*.yaml``, ``steps:``), run with ``python -m onmt_lma.study.runs study PLAN --step NAME``."""
