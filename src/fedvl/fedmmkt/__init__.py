"""Federated knowledge transfer between a server text-to-image model and small client task
models (FedMMKT, DESIGN.md 1.2): data, client task models and configuration. No torch at import."""
