"""Adapters that let other toolkits run our methods (each imports its toolkit; install its extra)."""
