"""The [metrics] endpoint: Prometheus metrics, the health dashboard page and `fig status`."""
