"""Shared infrastructure of the entry points: distributed helpers, checkpoints, tracking."""
