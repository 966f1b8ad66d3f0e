"""Benchmarks the project ships: ``python -m vlmerge.bench [NAME ...]`` prints their figures.

Every figure is quoted against a baseline measured in the same run, so numbers from different
machines compare as ratios.
"""
