"""Prefect tasks: one module per renewal step, thin policy around calls into certlc."""
