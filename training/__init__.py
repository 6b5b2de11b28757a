"""Training, calibration and benchmarks for napari-brainuad (run from the repo: ``python -m training``)."""
