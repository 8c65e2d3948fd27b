"""Benchmarks behind `python -m comm_jax.benchmark`: train step, loss, input pipeline, PyTorch anchor."""
