"""Helpers shared by several test modules, one module per theme.

tests/ is on sys.path under pytest's default import mode (there is no tests/__init__.py), so a
test module imports them as ``from helpers.nms import random_boxes``. conftest.py keeps only
pytest hooks and fixtures.
"""
