"""osapi: a REST API for Linux hosts, every operation a job on NATS JetStream."""

__version__ = "0.1.0"
