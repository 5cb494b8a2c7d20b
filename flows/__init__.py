"""Prefect flows: renew one certificate, sweep the vaults."""
