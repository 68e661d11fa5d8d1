"""Benchmark scripts for ArtifactFS; run them as ``python -m benchmarks.<name>`` from the repository root."""
