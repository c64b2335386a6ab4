"""The deployment layer: ONNX export and the ONNX Runtime engine, post-training quantization and
CTranslate2 conversion.  It builds on the base, model and training layers.
"""


