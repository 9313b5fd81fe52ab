"""Benchmarks that print numbers (never asserted in tests)."""
