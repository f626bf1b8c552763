"""Nagare: a lean, single-file DAG orchestrator and workflow engine."""

__version__ = "0.1.0"
