"""onmt-lma: compress OpenNMT-py 3.5.1 Transformers into small students (LMA, Xu et al. AAAI 2020).

The package is in layers, each importing only from those below it (docs/architecture.md):
``base`` -> ``model`` -> ``training`` -> ``deploy`` -> ``evaluation`` -> ``bin`` (the ``onmt_lma_*``
commands) and :mod:`onmt_lma.api`; the study layer (``study``) sits above all of them.  This file imports
nothing, so that ``import onmt_lma.base.files`` does not import torch.
"""

__version__ = "0.1.0"
