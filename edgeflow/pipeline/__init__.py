"""``edgeflow compile``: configuration, checkpointed stages and the report."""
