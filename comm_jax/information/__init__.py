"""Information measures and partial information decomposition (PID) estimators on any arrays."""
