"""The budget rule of a budgeted study: the pilot's validation curve fixes the step count N (``BUDGET.json``).
"""

import json
from pathlib import Path


def pilot_budget(curve, min_steps, max_steps, window, tolerance):
    """The budget N from the pilot's validation curve ``{step: perplexity}``, or None (not yet).

    N is the first step ``s >= min_steps`` with ``(ppl[s - window] - ppl[s]) / ppl[s - window] < tolerance``;
    ``max_steps`` once the curve reaches it without that.
    """
    for step in sorted(curve):
        if step > max_steps:
            break
        if step >= min_steps:
            gain = window_gain(curve, step, window)
            if gain is not None and gain < tolerance:
                return step
        if step == max_steps:
            return step
    return None


def window_gain(curve, step, window):
    """How much perplexity fell over the ``window`` steps up to ``step``, as a fraction of where it was
    (the pilot's rule); None without both points."""
    if step not in curve or step - window not in curve:
        return None
    return (curve[step - window] - curve[step]) / curve[step - window]


def read_budget(folder):
    path = Path(folder) / "BUDGET.json"
    return json.loads(path.read_text()) if path.exists() else None
