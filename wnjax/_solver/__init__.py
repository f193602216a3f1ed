"""Solvers diffrax lacks: stiffness switching."""
