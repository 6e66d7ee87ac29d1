"""The worker runtime: a Redis job queue and worker processes with `num_workers` async slots."""
