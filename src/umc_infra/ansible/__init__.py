"""Ansible: the playbook runner, the inventory, pinned SSH host keys.

Internal: the public API is :mod:`umc_infra` (and :mod:`umc_infra.sandbox`).
"""
