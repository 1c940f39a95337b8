"""Pipelines: plain functions and scripts that compose recsampled (recipes, benchmarks)."""
