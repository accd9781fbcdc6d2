"""One run on a deployment: session, plan, apply, destroy, drift, policy, journal, recovery, the facade.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
