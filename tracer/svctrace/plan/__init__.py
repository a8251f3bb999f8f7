"""CI plans from a report: tiers, shards, the matrix (pure)."""
