"""Fleet tools: rollout in waves, fleet status, broker ACLs."""
