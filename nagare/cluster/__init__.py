"""Cluster mode: the same nagare.pyz as a remote worker that pulls tasks from a master over
plain HTTP JSON (protocol), the master's side (coordinator) and the worker's side (remote)."""
