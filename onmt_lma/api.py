"""The Python API in one place: the activations, and installing the plugin into OpenNMT-py.

    import onmt_lma.api as lma

    act = lma.build_activation("lma", segments=8, momentum=0.99)  # a fresh module per call
    lma.install()                                                  # plug into OpenNMT-py (idempotent)

    @lma.register_activation("my_act")  # the one list of activations: now a -pos_ffn_activation_fn choice
    def my_act(units, segments, momentum):
        return MyModule(units)
"""

from onmt_lma.model.activations import (APLU, PReLU, Swish, activation_names, build_activation,  # noqa: F401  (the API)
                                        register_activation, registered_activations)
from onmt_lma.model.lma import DEFAULT_MOMENTUM, DEFAULT_SEGMENTS, LMA  # noqa: F401  (the API)


def install():
    """Plug onmt-lma into OpenNMT-py in this process (idempotent): :mod:`onmt_lma.training.plugin`."""
    from onmt_lma.training import plugin  # here: importing the API patches nothing until install() is called

    plugin.install()
