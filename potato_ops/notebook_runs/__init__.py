"""notebook_runs."""
