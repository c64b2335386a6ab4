"""onmt-lma: Light Multi-segment Activation (LMA) students for OpenNMT-py 3.5.1.

``import onmt_lma`` gives the activations without touching OpenNMT-py;
``onmt_lma.install()`` (or importing :mod:`onmt_lma.plugin`, as the
``onmt_lma_*`` commands do) plugs them into OpenNMT-py.  The names below load
on first use, so that light modules of the package (``onmt_lma.files``) do not
import torch.
"""

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {name: "onmt_lma.activations" for name in
            ("LMA", "PReLU", "Swish", "APLU", "activation_names", "build_activation", "register_activation")}

__all__ = [*_EXPORTS, "install"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onmt_lma' has no attribute {name!r}")


def install():
    """Plug onmt-lma into OpenNMT-py (idempotent); see :mod:`onmt_lma.plugin`."""
    from onmt_lma import plugin

    plugin.install()
