"""Benchmarks of bestfit (``python -m bench``, or ``make bench``); results go to ``bench/results/*.json``."""
