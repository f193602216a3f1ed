"""Reproductions of the seed papers' experiments, one module each (see ``wnjax._reproduce``)."""
