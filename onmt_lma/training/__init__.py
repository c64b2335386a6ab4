"""The training layer: the plugin that puts onmt-lma into OpenNMT-py's training and model loading,
word-level distillation (online teacher or its top-K cache), sequence-level distillation data,
quantization-aware training, exact resumption and checkpoint averaging.  It builds on the base and model layers.
"""


