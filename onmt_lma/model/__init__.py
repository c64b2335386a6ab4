"""The model layer: the activations (LMA and its baselines), LMA's fused CPU kernel and batch statistics,
the model options saved in checkpoints, and quantized weights.  It builds on :mod:`onmt_lma.base` only.
"""


