"""Information measures and partial information decomposition (PID) estimators on any arrays:
exact BROJA PID of discrete joints and its clustering estimator on continuous features."""

from comm_jax.information.discrete_estimator import PIDEstimate, pid_from_codes, pid_from_features
from comm_jax.information.measures import (
    conditional_entropy, conditional_mutual_information, entropy, mutual_information)
from comm_jax.information.pid import PID_PARTS, broja

__all__ = [
    "PID_PARTS", "PIDEstimate", "broja", "conditional_entropy", "conditional_mutual_information",
    "entropy", "mutual_information", "pid_from_codes", "pid_from_features",
]
