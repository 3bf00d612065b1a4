"""Benchmarks for the webhook receiver (see bench/README.md). Not part of the installed package."""
