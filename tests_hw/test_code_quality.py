"""CP3 gate, Code Quality: checks on the llama-orch checkout given by --llorch-repo.

cargo fmt and clippy run in the checkout with a cached target directory under the pool root;
when cargo cannot run the check (offline, no toolchain) the item is an ERROR, "could not
check", and never a failure of the code. Signatures and guides are judged on what the range
base..HEAD added (`--llorch-base`, else the merge base with the upstream); the rules live in
llorch_harness/gate/{codequality,cargocheck,gitrange}.py.

xdist: these tests carry no xdist_group (only tests that start workers do), so under
`--dist loadgroup` the two cargo items run on any free xdist worker, beside the worker tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from gatehelpers import expect, pool_level

from llorch_harness.errors import HarnessError
from llorch_harness.gate import cargocheck, codequality, gitrange
from llorch_harness.gate.checklist import COULD_NOT_CHECK
from llorch_harness.plugin.labs import redact

SECTION = "Code Quality"


@pytest.fixture(scope="module")
def repo(lab) -> Path:
    if not lab.settings.llorch_repo:
        pytest.skip("no llama-orch checkout: pass --llorch-repo DIR (or LLORCH_REPO) to run "
                    "the Code Quality items")
    path = Path(lab.settings.llorch_repo).expanduser()
    if not path.is_dir():
        pytest.fail(f"--llorch-repo {path} is not a directory", pytrace=False)
    return path


def _could_not_check(request: pytest.FixtureRequest, record: dict[str, Any],
                     err: HarnessError, shown: list[str] | None = None) -> NoReturn:
    """Fail the setup with the reason as a user property: the checklist shows ERROR, "could
    not check: <reason>", and the merge does not count it as a failure of the code."""
    reason = redact(err.one_line())
    record["could_not_check"] = reason
    request.node.user_properties.append((COULD_NOT_CHECK, reason))
    detail = "\n".join(["", *shown]) if shown else ""
    pytest.fail(redact(f"could not check: {reason}{detail}"), pytrace=False)


@dataclass(frozen=True)
class Checkpoint:
    rng: gitrange.GitRange
    changed: Mapping[str, str]


@pytest.fixture
def checkpoint(repo, lab, gate_record, request) -> Checkpoint:
    """The range base..HEAD and the files it changed (per test: an error belongs to its item)."""
    try:
        rng = gitrange.resolve_range(repo, lab.settings.llorch_base)
        changed = gitrange.changed_files(rng)
    except HarnessError as err:
        _could_not_check(request, gate_record, err)
    gate_record["range"] = rng.describe()
    return Checkpoint(rng, changed)


def _cargo(kind: str, args: list[str], repo: Path, lab: Any, pool_paths: Any,
           record: dict[str, Any], request: pytest.FixtureRequest) -> cargocheck.CargoOutcome:
    offline = bool(lab.settings.cargo_offline)
    target = cargocheck.target_dir(pool_paths.runtime_dir, repo)
    record.update(offline=offline)
    try:
        pool_paths.writable_dir(target)
        run = cargocheck.run_cargo(repo, args, cargocheck.cargo_env(target, offline))
    except HarnessError as err:
        _could_not_check(request, record, err)
    except OSError as exc:
        _could_not_check(request, record, HarnessError(
            f"cannot create the cargo target directory {target}: {exc.strerror or exc}",
            "fix the pool root's permissions or free space"))
    print(f"$ {run.command}\n  in {repo}, CARGO_TARGET_DIR={run.target_dir}")
    outcome = cargocheck.classify(run, kind)
    record.update(command=run.command, target_dir=run.target_dir, outcome=outcome.status,
                  first_lines=outcome.shown)
    if outcome.status == "error":
        _could_not_check(request, record, HarnessError(outcome.summary, outcome.hint),
                         outcome.shown)
    return outcome


@pytest.fixture
def fmt_outcome(repo, lab, pool_paths, gate_record, request) -> cargocheck.CargoOutcome:
    return _cargo("fmt", cargocheck.fmt_args(), repo, lab, pool_paths, gate_record, request)


@pytest.fixture
def clippy_outcome(repo, lab, pool_paths, gate_record, request) -> cargocheck.CargoOutcome:
    args = cargocheck.clippy_args(bool(lab.settings.cargo_offline))
    return _cargo("clippy", args, repo, lab, pool_paths, gate_record, request)


def _shown(outcome: cargocheck.CargoOutcome) -> str:
    return "\n".join([outcome.summary, *outcome.shown])


@pytest.mark.gate(SECTION, "`cargo fmt --all` clean")
@pool_level
def test_cargo_fmt_clean(repo, fmt_outcome):
    expect(fmt_outcome.status == "pass", "`cargo fmt --all -- --check` exit 0 (no diff)",
           _shown(fmt_outcome), str(repo))


@pytest.mark.gate(SECTION, "`cargo clippy --all` clean")
@pool_level
def test_cargo_clippy_clean(repo, clippy_outcome):
    """Clean means no warning either: -D warnings."""
    expect(clippy_outcome.status == "pass", "`cargo clippy --all -- -D warnings` exit 0",
           _shown(clippy_outcome), str(repo))


def _evidence(res: codequality.ItemResult, record: dict[str, Any], key: str) -> None:
    """The range and the files and lines that satisfied the item, in the report and output."""
    record.update(res.details)
    print(f"range {res.details['range']}")
    for name, entry in res.details[key].items():
        print(f"{name}: {entry.get('why') or entry.get('file')}")
        for line in entry.get("lines", []):
            print(f"    {line}")


@pytest.mark.gate(SECTION, "Team signatures added")
@pool_level
def test_team_signatures(checkpoint, gate_record):
    res = codequality.check_signatures(checkpoint.rng, checkpoint.changed)
    _evidence(res, gate_record, "deliverables")
    expect(res.passed, "a TEAM-NNN signature in the lines base..HEAD added to each CP3 "
           "deliverable it changed (and at least one changed)", res.summary,
           f"{checkpoint.rng.root} {checkpoint.rng.describe()}")


@pytest.mark.gate(SECTION, "Documentation updated")
@pool_level
def test_documentation_updated(checkpoint, gate_record):
    """The three guides of the CP3 deliverables, found by the commands they show."""
    res = codequality.check_guides(checkpoint.rng, checkpoint.changed)
    _evidence(res, gate_record, "guides")
    expect(res.passed, "base..HEAD adds or changes a download, a worker spawning and a "
           "troubleshooting guide", res.summary,
           f"{checkpoint.rng.root} {checkpoint.rng.describe()}")
