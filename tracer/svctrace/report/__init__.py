"""The report: built from attribution (pure), merged across shards, read and written as versioned JSON."""
