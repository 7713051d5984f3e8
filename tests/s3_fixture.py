"""Placeholder: moto standalone S3 server fixture (filled in by the backends work)."""
