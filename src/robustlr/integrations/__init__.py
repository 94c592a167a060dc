"""Integrations with other federated-learning frameworks (Flower lands in ``flower/``)."""
