"""The base layer: errors, options, files, checkpoints and batching that every layer above uses.

It imports nothing from the layers above (model, training, deploy, evaluation, bin, study).
"""


