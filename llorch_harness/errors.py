"""The harness's one error hierarchy: everything a user can cause or fix, printed as one line.

Every error the harness raises on purpose derives from `HarnessError` (message + optional
hint + exit code), so each CLI prints exactly one line `error: <message> (<hint>)` and exits
with `exit_code`, and a library caller catches one type. The tree (tests/test_errors.py
checks that every exception class of the package appears here, under its base):

    HarnessError                      errors.py: bad input, missing files, failed commands
    ├── LabFailure                    errors.py: the lab, not the worker under test, failed
    │   │                             (hub, disk, lease, device tool): `cause` names the class,
    │   │                             a gate item becomes "could not check (lab: CAUSE)"
    │   └── PoolUnreachable           errors.py: ssh itself failed (status 255): unreachable,
    │                                 refused, authentication or host key; the one class for
    │                                 `llorch pool(s)` and `llorch-harness gate run`
    ├── RemoteTimeout                 errors.py: a remote command ran past its deadline (it
    │                                 was stopped there too); exit 124
    ├── NotRegularFileError           fsutil.py: a FIFO, device or directory where a file is read
    ├── WorkerStartError              pool/workers/spawn.py: a worker exited or never got ready
    ├── GitRangeError                 gate/gitrange.py: a commit range the code checks cannot use
    ├── UnknownName                   choices.py: a typed name (model id, backend, marker,
    │                                 pool) that is not known; its kind's exit status
    └── ModelLoadError                lab/refworker/weights.py: the reference worker cannot load
                                      a model (its message is candle's)

Internal signals, not errors (raised and caught inside one module or one call; they never
reach a user, so they need no hint and no exit code):

    NotReady                          pool/readiness.py: spawn turns it into WorkerStartError
    HubStalled                        pool/hubdeadline.py: download turns it into a HarnessError
    OptionError                       plugin/labs.py: pytest turns it into a usage error
    ExpressionError                   plugin/markexpr.py: a `-m` text pytest itself reports
    LineTooLong                       checks/sse.py: the worker client's stream error
    SmiError                          pool/devicehealth/smi.py: a device health reading's error
    BadTarget                         lab/hub/routes.py: the local hub's 400 answer
    BadRecord                         perf/checked.py: a performance record's field of the
                                      wrong type; its loader names the file (exit 2)

The reference worker (lab/refworker/) is a separate program speaking the worker contract;
its own exceptions mimic candle's and llorch-candled's and end as that program's exit
status or HTTP answer, never as a harness error:

    CandleError, BroadcastError, ContextOverflowError, InferenceFailed, StartupError,
    SettingError, FaultSpecError, JsonRejection, SerdeError, CliExit

Private classes (a leading underscore) are control flow inside their module.
"""

from __future__ import annotations

SSH_FAILED = 255  # ssh's own status for "could not connect / authenticate / verify"
TIMED_OUT = 124  # timeout(1)'s status: the command ran past its deadline


class HarnessError(Exception):
    """A problem the user can act on: printed as one line, never as a traceback."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class LabFailure(HarnessError):
    """A failure whose cause lies outside the worker under test: the hub, the disk, a lease,
    a device tool, the ssh link to a pool, the test process itself.

    Why a class of its own: a verdict blames the worker only on evidence; the gate reports
    this as "could not check (lab: CAUSE)", never as FAIL. `cause` is the short class a
    person reads in the verdict line (`hub unreachable`), `detail` the evidence, and
    `transient` says whether one retry may help (connection reset, timeout, 5xx)."""

    def __init__(self, cause: str, detail: str, hint: str | None = None, *,
                 transient: bool = False, message: str | None = None,
                 exit_code: int = 1) -> None:
        super().__init__(message or detail, hint, exit_code)
        self.cause = cause
        self.detail = detail
        self.transient = transient
        self.retried = False  # set when a retry of a transient cause failed as well


def ssh_failure_kind(detail: str) -> str:
    """Which of ssh's own failures its last stderr line names (for the lab cause)."""
    low = detail.lower()
    for words, kind in ((("host key", "host identification"), "host key"),
                        (("permission denied", "authentication"), "authentication"),
                        (("refused",), "connection refused"),
                        (("timed out", "timeout"), "timeout"),
                        (("resolve", "no route", "unreachable"), "host unreachable"),
                        (("connection reset", "closed by remote"), "connection reset")):
        if any(w in low for w in words):
            return kind
    return "ssh failed"


class PoolUnreachable(LabFailure):
    """ssh itself failed (status 255): the pool was never reached, nothing ran there.

    `pool` is the pool's label (`name (host)`), `host` the ssh destination and `detail`
    ssh's last line on stderr (`Connection refused`, `Host key verification failed.`).
    A remote command that ran and failed is not this: its status is the command's."""

    def __init__(self, pool: str, host: str, detail: str, hint: str | None = None) -> None:
        kind = ssh_failure_kind(detail)
        super().__init__(
            f"pool unreachable over ssh ({kind})", detail, hint,
            # only failures before a session exists are retried: nothing ran on the pool
            transient=any(w in detail.lower() for w in ("timed out", "kex_exchange")),
            message=f"cannot reach pool {pool} over ssh: "
                    f"{detail or 'ssh exited with status 255'}",
            exit_code=SSH_FAILED)
        self.pool = pool
        self.host = host


class RemoteTimeout(HarnessError):
    """A remote command did not finish within its deadline; it was stopped on the pool."""

    def __init__(self, pool: str, seconds: float) -> None:
        super().__init__(f"pool {pool}: remote command did not finish within {seconds:g}s",
                         "it was stopped there; pass a longer --timeout", exit_code=TIMED_OUT)
        self.pool = pool
        self.seconds = seconds
