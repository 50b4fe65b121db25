"""Built-in run configs (``ml_collections.ConfigDict`` factories)."""
