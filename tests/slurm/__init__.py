"""Tests that need a real (local, one-node) SLURM cluster."""
