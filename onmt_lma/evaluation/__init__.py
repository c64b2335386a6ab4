"""The evaluation layer: test sets (prepared or raw), sacreBLEU/chrF scoring, translation speed, memory and
perplexity measured in a fresh process, one evaluation's result file, and LMA's recalibrated statistics.
"""


