"""Terraform: argv builders, the runner, plan JSON, the provider mirror, the backend, state locks.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
