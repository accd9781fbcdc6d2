"""Every test process: Ctrl-C (SIGINT) is an interrupt here and in every process a test starts.

A shell that starts the suite in the background without job control (``nox -s tests &`` in a script, some CI
agents) leaves SIGINT ignored, and an ignored signal stays ignored across exec: the tests that interrupt a run
with SIGINT would then see it ignored. A handler (unlike an ignored signal) is reset to the default at exec, so
the children of this process get SIGINT's default action whatever the suite was started from.
"""

from __future__ import annotations

import signal


def pytest_configure(config: object) -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
