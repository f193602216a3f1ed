"""Diagnostics of the asymptotic regime, the equivalence check, the asymptotics run."""
