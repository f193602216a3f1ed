"""The dynamics: gradient flow on diffrax, the GD/SGD engine on optax, rates and schedules."""
