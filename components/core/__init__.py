"""Core: config, errors, typed references and the catalog (the one place that knows where artifacts live)."""
