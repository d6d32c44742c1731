"""Adapters and entry points: the faust app, Redis state, Kafka output, CLI."""

__version__ = "0.1.0"
