"""Uncertainty of frozen representations: OOD and failure-prediction scores (`scores`) and the
metrics that judge them (`metrics`); NumPy/JAX arrays in, numbers out."""
