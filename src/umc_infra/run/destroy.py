"""Destroy: every module in reverse dependency order, each with the inputs it was last applied with."""

from __future__ import annotations

import shutil

from umc_infra.ansible import hostkeys
from umc_infra.blueprint.references import dependency_order, needs
from umc_infra.run.journal import Journal
from umc_infra.run.options import RunOptions
from umc_infra.run.recovery import recover
from umc_infra.run.results import DestroyResult
from umc_infra.run.session import Session
from umc_infra.state import ipam as _ipam
from umc_infra.terraform.plan import ChangeCounts


def destroy(session: Session, options: RunOptions) -> DestroyResult:
    """Remove everything the session's deployment made; the record stays, marked destroyed."""
    recover(session, full=True)
    record = session.records.get(session.deployment)
    assert record is not None
    journal = session.journal = Journal.start(session.records, record, action="destroy",
                                              blueprint_version=record.version, requested_by=options.requested_by,
                                              ticket=options.ticket)  # fmt: skip
    try:
        session.hooks("before_destroy", "destroy")
        counts = destroy_modules(session, list(record.modules or session.spec.modules))
        with session.step("addresses"):
            released = _ipam.release(session.store, deployment=session.deployment)
            hostkeys.forget(session.store, session.deployment)
        session.hooks("after_destroy", "destroy")
    except BaseException as exc:
        journal.failed(exc, redactor=session.redactor, timings=session.timings, failed_step=session.failed_step)
        raise
    journal.finish("succeeded", timings=session.timings, changes=counts,
                   record_changes={"state": "destroyed", "hosts": (), "outputs": {}})  # fmt: skip
    shutil.rmtree(session.settings.state_dir / "work" / session.deployment, ignore_errors=True)
    return DestroyResult(deployment=session.deployment, already_destroyed=False, terraform=counts,
                         released_addresses=tuple(released))  # fmt: skip


def destroy_modules(session: Session, modules: list[str]) -> dict[str, ChangeCounts]:
    """Destroy ``modules`` in reverse dependency order, each with the inputs it was last applied with.

    A module's inputs may read outputs of modules it depends on: those still exist (destroy goes in
    reverse), and are read from their state.
    """
    counts: dict[str, ChangeCounts] = {}
    session.check_space()
    spec = session.spec
    for name, instance in spec.modules.items():
        if instance.addresses is not None:
            session.held_addresses(name)
    for module in reversed([m for m in dependency_order(spec) if m in modules]):
        with session.step(f"terraform.destroy.{module}"):
            for needed in sorted(needs(spec, module)):
                if needed not in session.values.outputs:
                    session.read_outputs(needed, session.init_only(needed))
            if session.journal is not None:
                session.journal.working(module)
            workdir, secret = session.prepare(module)
            counts[module] = session.terraform.apply(workdir, module=module, secret_inputs=secret, destroy=True)
    return counts
