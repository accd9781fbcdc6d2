r"""Redaction: secret values replaced by ``***`` in everything that streams out of a run.

A value is hidden in the forms in which tools and formats print it, not only verbatim: JSON-escaped
(``"`` becomes ``\\"``, non-ASCII ``\\uXXXX``), Python-repr-escaped, HTML-escaped and URL-encoded, and, for
multi-line values such as keys, line by line.

Short values are common words and digits (a secret ``true``, ``umc`` or ``1234``): hiding every occurrence
inside other words would blank out ordinary text and break nothing safely. A value shorter than
:data:`MIN_SUBSTRING` characters is therefore hidden only where it stands as a token of its own (not
inside a longer run of letters and digits). For the same reason, the check that refuses a secret in a
child's argv (:meth:`Redactor.in_argv`) matches short values only as a whole argument.

Machine-readable output that umc_infra parses (``terraform output -json``) is parsed before it is
redacted: redacting ``true`` inside JSON would corrupt it.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from collections.abc import Iterable, Sequence

from pydantic import SecretStr

REDACTED = "***"
MIN_SUBSTRING = 8
"""Values at least this long are hidden wherever they occur; shorter ones only as whole tokens."""


def _forms(value: str) -> set[str]:
    """The ways a value shows up in text: verbatim and escaped."""
    forms = {value}
    for text in (value, *value.splitlines()):
        if not text.strip():
            continue
        forms |= {
            text,
            json.dumps(text)[1:-1],
            json.dumps(text, ensure_ascii=False)[1:-1],
            repr(text)[1:-1],
            html.escape(text),
            html.escape(text, quote=False),
            urllib.parse.quote(text, safe=""),
            urllib.parse.quote_plus(text, safe=""),
        }
    return {f for f in forms if f.strip()}


class Redactor:
    """Replaces known secret values (in every escaped form) with ``***``.

    Args:
        secrets: Values to hide. Empty values are ignored.

    """

    def __init__(self, secrets: Iterable[SecretStr | str] = ()) -> None:
        self._values: set[str] = set()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: SecretStr | str) -> None:
        """Hide more values from now on."""
        for secret in secrets:
            value = secret.get_secret_value() if isinstance(secret, SecretStr) else str(secret)
            if not value.strip() or value in self._values:
                continue
            self._values.add(value)
            self._forms |= _forms(value)
            self._pattern = None

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._forms:
            parts = []
            for form in sorted(self._forms, key=len, reverse=True):
                escaped = re.escape(form)
                if len(form) < MIN_SUBSTRING:
                    escaped = rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"
                parts.append(escaped)
            self._pattern = re.compile("|".join(parts))
        return self._pattern

    def __call__(self, text: str) -> str:
        """``text`` with every secret value (in any of its forms) replaced by ``***``."""
        pattern = self._compiled()
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def contains_secret(self, text: str) -> bool:
        """Whether ``text`` holds any of the secret values, in any of their forms."""
        pattern = self._compiled()
        return pattern is not None and pattern.search(text) is not None

    def in_argv(self, argv: Sequence[str]) -> bool:
        """Whether an argument is a secret, or contains one at least :data:`MIN_SUBSTRING` characters long."""
        for arg in argv:
            for form in self._forms:
                if arg == form or (len(form) >= MIN_SUBSTRING and form in arg):
                    return True
        return False

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} values)"
