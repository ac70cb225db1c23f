"""CP3 gate extra item "No performance regression": every run measures the worker build the
same way and compares it with the pool's history.

A build that answers correctly but loads twice as slowly, or decodes 30% fewer tokens per
second, passes every other item. This test spawns fresh workers of the backend (load time,
memory at ready), sends a warm-up request and measured greedy requests (client-side
arrival times, the log's tokens_generated), records the figures in the pool's results
store and compares each with the median of the last passing runs of the same fingerprint
except the worker binary (docs/gate.md, "Performance history"). Without enough history the
run only records; `--no-perf-gate` skips the item. The host's conditions are watched over
every measurement: a host that stays busy (other processes on the cores or the GPU, a
throttled device) makes the item "could not check (host busy: ...)" with the figures, never
a failure and never a pass.
"""

from __future__ import annotations

import pytest
from gatehelpers import backend_param, expect

from llorch_harness.gate.checklist import COULD_NOT_CHECK
from llorch_harness.perf.baseline import BUSY_PREFIX
from llorch_harness.perf.runkey import PERF_ITEM, PERF_SECTION
from llorch_harness.pool.backends import PREFERENCE

BACKENDS = [backend_param(b) for b in PREFERENCE]


@pytest.mark.gate(PERF_SECTION, PERF_ITEM)
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_performance_regression(backend, request, lab, pool_paths, worker_factory,
                                   gate_record):
    """Figures of fresh workers of this build within their baseline band (an improvement is
    reported, never failed)."""
    if lab.settings.no_perf_gate:
        pytest.skip("--no-perf-gate: performance not measured, recorded or compared this run")
    from llorch_harness.errors import HarnessError
    from llorch_harness.perf import session

    try:
        out = session.measure_and_check(request.config, lab, pool_paths, worker_factory, backend)
    except HarnessError as err:  # a worker that never got ready, a locked store: one line
        pytest.fail(err.one_line(), pytrace=False)
    gate_record["performance"] = out.summary()
    if out.busy:  # the checklist's "could not check": not a pass, not the worker's failure
        reason = out.verdict.message().removeprefix(BUSY_PREFIX)
        request.node.user_properties.append((COULD_NOT_CHECK, reason))
        pytest.fail(reason, pytrace=False)
    expect(out.verdict.status != "fail",
           "every figure within its baseline band: "
           f"{out.verdict.rule.describe()} with this fingerprint except the worker binary",
           out.verdict.message(), out.where)
