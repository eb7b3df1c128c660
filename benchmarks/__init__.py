"""lsframe's benchmarks: each module is a script, run from the repository root as
``python -m benchmarks.<script> ...`` (``python -m benchmarks.report`` runs them all)."""
