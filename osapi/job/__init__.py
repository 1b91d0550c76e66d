"""The job system on NATS JetStream: operations table, store, routing, workers."""
