"""What must happen before OpenNMT-py 3.5.1 is imported: import this module first, wherever ``onmt`` is imported.

* OpenNMT-py imports every transform when it starts, and the terminology transform imports spaCy (about a
  third of a command's start-up) to call ``spacy.load`` only when it is used; a deferred ``spacy`` goes into
  ``sys.modules`` (:class:`DeferredModule`) that imports the real one on first use;
* OpenNMT-py 3.5.1 uses ``torch.cuda.amp`` decorators that today's torch deprecates; the warnings are raised
  while onmt imports, so the filter comes first.
"""

import importlib
import importlib.util
import sys
import types
import warnings


class DeferredModule(types.ModuleType):
    """A module that imports itself on the first use of one of its attributes.

    Until then it has no ``__file__``, so that ``inspect.getmodule`` (which torch
    calls on every module in ``sys.modules``) passes it by instead of importing it.
    Once imported, ``sys.modules`` holds the real module and this one shares its
    attributes (a name bound to this object keeps working).
    """

    def __getattr__(self, name):
        if name == "__file__":
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:  # not imported yet (never twice)
            del sys.modules[self.__name__]
            self.__dict__.update(importlib.import_module(self.__name__).__dict__)
        return getattr(sys.modules[self.__name__], name)

    @classmethod
    def install(cls, name):
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = cls(name)


DeferredModule.install("spacy")  # before onmt: only its terminology transform uses spaCy
warnings.filterwarnings("ignore", category=FutureWarning, module=r"onmt(\.|$)")
