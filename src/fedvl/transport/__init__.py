"""Transports that reach the clients: in-process, and Flower (simulation and deployment)."""
