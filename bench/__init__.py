"""Benchmarks that print ratios against the limit measured in the same run (DESIGN.md)."""
