"""LMA's statistics in a built model: its layers, their running statistics, and the mode in which a forward
pass recomputes them as the plain mean of batch statistics (used by ``onmt_lma_recalibrate``).
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import contextlib

from onmt.modules.multi_headed_attn import MultiHeadedAttention

from onmt_lma.model.lma import LMA


def lma_layers(model):
    """``{name: LMA module}`` of every LMA layer of ``model``, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LMA)}


@contextlib.contextmanager
def batch_statistics_mode(model, dropout=False):
    """Dropout off (on with ``dropout``, as in training), every LMA layer in training mode with a cumulative
    mean for its running statistics.

    Inside, call ``next_batch()`` before each forward pass: the n-th batch gets weight 1 / n, so that after
    n batches the running statistics are the mean of the n batch statistics.  Modes and momenta are restored.
    """
    layers = lma_layers(model)
    modes = {name: module.training for name, module in model.named_modules()}
    momenta = {name: layer.momentum for name, layer in layers.items()}
    seen = [0]

    def next_batch():
        seen[0] += 1
        for layer in layers.values():
            layer.momentum = 1.0 - 1.0 / seen[0]  # running = (n - 1)/n * running + 1/n * batch

    model.train(dropout)
    for layer in layers.values():
        layer.train()
    try:
        yield next_batch
    finally:
        for name, module in model.named_modules():
            module.training = modes[name]
        for name, layer in layers.items():
            layer.momentum = momenta[name]


def training_dropout(model, model_opt):
    """Give ``model`` back the dropout of its training options (first value of ``-dropout`` and
    ``-attention_dropout``): OpenNMT-py's ``load_test_model`` sets every ``dropout_p`` to 0."""
    def first(value):
        return float(value[0] if isinstance(value, (list, tuple)) else value)

    dropout, attention_dropout = first(model_opt.dropout), first(model_opt.attention_dropout)
    model.update_dropout(dropout, attention_dropout)
    for module in model.modules():
        if hasattr(module, "dropout_p"):
            module.dropout_p = attention_dropout if isinstance(module, MultiHeadedAttention) else dropout
    return dropout, attention_dropout


def running_statistics(model):
    """``{layer name: (running_mean, running_std)}`` as floats."""
    return {name: (float(layer.running_mean), float(layer.running_std)) for name, layer in lma_layers(model).items()}
