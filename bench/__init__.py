"""Benchmarks of osapi: ``python3 bench/run.py`` measures, ``bench/results.md`` reports.

Benchmarks report; they never fail the test suite. Each figure is measured next
to its reference in the same run (the floor of the design, ``python3 -c pass``,
the 3 s quiet period of the original design), so a slower machine moves both.
"""
