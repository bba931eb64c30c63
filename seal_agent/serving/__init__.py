"""Serving the adapters outside this process (vLLM)."""
