"""Secrets from Vault: the source, its auth methods, and redaction.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
