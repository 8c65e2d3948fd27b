"""Ahead-of-time plans of a launch: compile the real train step and the evaluation's embedding step
for a TPU pod (the TPU compiler from the `libtpu` wheel, no chip needed) or for fake CPU devices,
and report per-chip memory, FLOPs, collectives and a roofline estimate. Run `python -m comm_jax.aot_check`."""
