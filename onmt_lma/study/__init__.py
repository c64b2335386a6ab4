"""The study layer, on top of the plugin core: recipe composition and runs (:mod:`.recipes`), reports
(:mod:`.report` tables, :mod:`.plots` figures) and benchmark timing (:mod:`.benchmark`).

It imports the core (``onmt_lma``); the core never imports it.
"""
