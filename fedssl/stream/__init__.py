"""Incremental FedSSL under domain shift: domains, stages, client memory, metrics."""
