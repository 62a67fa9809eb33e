"""ROME causal tracing: clean, corrupted and restored runs, with restored runs that reuse
the corrupted run's states and keys/values instead of recomputing the whole model."""
