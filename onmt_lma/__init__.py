"""onmt-lma: Light Multi-segment Activation (LMA) students for OpenNMT-py 3.5.1.

``import onmt_lma`` gives the activations without touching OpenNMT-py;
``onmt_lma.install()`` (or importing :mod:`onmt_lma.plugin`, as the
``onmt_lma_*`` commands do) plugs them into OpenNMT-py.
"""

from onmt_lma.activations import (
    APLU,
    LMA,
    PReLU,
    Swish,
    activation_names,
    build_activation,
    register_activation,
)

__version__ = "0.1.0"

__all__ = [
    "LMA",
    "PReLU",
    "Swish",
    "APLU",
    "activation_names",
    "build_activation",
    "register_activation",
    "install",
]


def install():
    """Plug onmt-lma into OpenNMT-py (idempotent); see :mod:`onmt_lma.plugin`."""
    from onmt_lma import plugin

    plugin.install()
