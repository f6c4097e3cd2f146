"""Serving: the one loader (checkpoint, run folder or named weights), evaluate and predict."""
