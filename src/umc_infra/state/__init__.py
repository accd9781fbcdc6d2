"""The state backend: the store (local, S3), the deployment lease, records, address claims.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
