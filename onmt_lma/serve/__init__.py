"""The serving layer: ``onmt_lma_server``'s models (PyTorch checkpoints, ``onmt_lma_export`` folders,
CTranslate2 models) behind one interface, raw text in and out through the corpus's own steps, batching of
concurrent requests, and the HTTP application.  It builds on the deploy and evaluation layers.
"""
