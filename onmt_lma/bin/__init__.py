"""The commands, on top of every other layer: one module per ``onmt_lma_*`` command (pyproject's scripts),
each with ``get_parser()`` and ``main()``; :mod:`.parser` is their shared parser and the list of commands.
"""



import onmt_lma.base.onmt_import  # noqa: F401  (before any command imports onmt: its known warnings silenced)
