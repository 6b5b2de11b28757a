"""napari-brainuad: unsupervised anomaly detection in brain MRI, as a napari plugin and a library."""
__version__ = "0.1.0"
