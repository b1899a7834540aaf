"""ops/bulk."""
