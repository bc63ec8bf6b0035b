"""Micro-benchmarks (attention backends) and the measurement helpers they share."""
