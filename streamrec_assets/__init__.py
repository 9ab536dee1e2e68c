"""StreamRec: a Dagster code location for a streaming-media recommendation pipeline."""
