"""Synthetic data generation: per-method prompt builders, the resumable runner, and their stages."""
