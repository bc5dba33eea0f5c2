"""Calibration: measure a device (bench), import public measurements (vidur), fit efficiency models (fit).

Submodules are imported on demand (``simkit.calibrate.fit``, ``.vidur``, ``.bench``): importing
this package loads nothing heavy (no torch, no scikit-learn).
"""
