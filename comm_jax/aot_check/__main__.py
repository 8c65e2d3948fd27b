"""`python -m comm_jax.aot_check`: see `comm_jax.aot_check.cli`."""

from comm_jax.aot_check.cli import main

main()
