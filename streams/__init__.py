"""Adapters and entry points: the faust app, Redis state, Kafka output, CLI."""
