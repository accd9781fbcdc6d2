"""Service blueprints: the model, references, checks, the catalog of sources, extends, validate.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
