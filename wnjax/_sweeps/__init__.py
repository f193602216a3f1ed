"""Seed sweeps and their resumable results store."""
