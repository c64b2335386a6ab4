"""The study layer, on top of every other layer: study plans and their runs (:mod:`.runs`, :mod:`.plan`),
recipe composition (:mod:`.recipes`), reports (:mod:`.report`, :mod:`.plots`, :mod:`.paired_report`),
benchmark timing (:mod:`.benchmark`) and the studies' own steps (:mod:`.probes`).

It imports the layers below; none of them imports it.
"""
