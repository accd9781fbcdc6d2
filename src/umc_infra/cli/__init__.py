"""The ``umc-infra`` command line.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
