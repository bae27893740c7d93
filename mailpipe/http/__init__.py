"""The HTTP surfaces: one module per group of endpoints, one app factory."""
