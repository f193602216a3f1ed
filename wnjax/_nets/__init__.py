"""Models, their neurons, and the per-neuron parameterizations (standard, SWN, EWN)."""
