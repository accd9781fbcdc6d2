"""The doctor's bookkeeping: skipped after a failed prerequisite, failures say what to do, no error text leaks."""

from __future__ import annotations

from umc_infra import SecretError, Settings
from umc_infra.doctor import _Doctor, _Failed


def run(*checks) -> list:
    d = _Doctor(Settings(), on_check=lambda c: None)
    for name, body, needs in checks:
        d.check(name, body, needs=needs, fix="the default fix")
    return [(c.name, c.status, c.detail, c.fix) for c in d.checks]


def fail(exc: Exception):
    def body() -> str:
        raise exc

    return body


def test_a_failed_check_skips_the_checks_that_need_it_and_only_those():
    checks = run(("vault", fail(_Failed("down", "start it")), ()), ("auth", lambda: "in", ("vault",)),
                 ("state", lambda: "fine", ()))  # fmt: skip
    assert checks == [
        ("vault", "failed", "down", "start it"),
        ("auth", "skipped", "not checked: vault did not pass", ""),
        ("state", "ok", "fine", ""),
    ]


def test_a_library_error_keeps_its_message_and_an_unexpected_one_shows_only_its_kind():
    canary = "s3cr3t-value-that-must-not-show"
    checks = run(("read", fail(SecretError("secret kv/data/x#y does not exist", reference="kv/data/x#y")), ()),
                 ("odd", fail(ValueError(f"parse error near {canary}")), ()))  # fmt: skip
    assert checks == [("read", "failed", "secret kv/data/x#y does not exist", "the default fix"),
                      ("odd", "failed", "unexpected ValueError", "the default fix")]  # fmt: skip
    assert canary not in repr(checks)
