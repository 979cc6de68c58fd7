"""Planning, loading and running pipelines."""
