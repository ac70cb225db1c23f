"""The rule that makes a commit good, bad or skipped, and the search over the range.

The rule (docs/bisect.md says it the same way): each chosen item runs K times at a commit.
An item is **bad** there when it failed in more than half of the K runs, **good** when it
passed in more than half, and **undecided** otherwise (runs that could not check it, were
skipped or did not run count for neither side). A commit is bad when any chosen item is
bad, good when every chosen item is good, and skipped otherwise, as is a commit whose build
failed: like `git bisect skip`, the search then tries the untested commit nearest to the
middle, and when only skipped commits are left between the last good and the first bad
commit, the answer is that range. A majority, not one failure: an item that fails one run
in three (a flaky test, a busy lab) does not move the answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

GOOD, BAD, SKIP = "good", "bad", "skip"


def item_decision(statuses: Sequence[str]) -> str:
    """good | bad | undecided for one item's K statuses."""
    k = len(statuses)
    if k and 2 * sum(s == "fail" for s in statuses) > k:
        return BAD
    if k and 2 * sum(s == "pass" for s in statuses) > k:
        return GOOD
    return "undecided"


def commit_decision(per_item: Mapping[str, Sequence[str]]) -> str:
    """bad when any item is bad, good when every item is good, else skip."""
    decisions = [item_decision(s) for s in per_item.values()]
    if BAD in decisions:
        return BAD
    if decisions and all(d == GOOD for d in decisions):
        return GOOD
    return SKIP


@dataclass
class Search:
    """Binary search on indices of `commits` (oldest first; the last is the bad commit).
    -1 stands for the good commit. `lo` is the newest known good, `hi` the oldest known bad."""

    size: int
    lo: int = -1
    hi: int = -1
    skipped: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = self.size - 1

    def record(self, index: int, decision: str) -> None:
        if decision == GOOD:
            self.lo = max(self.lo, index)
        elif decision == BAD:
            self.hi = min(self.hi, index)
        else:
            self.skipped.add(index)

    def untested(self) -> list[int]:
        return [i for i in range(self.lo + 1, self.hi) if i not in self.skipped]

    def next_index(self) -> int | None:
        """The untested commit nearest the middle of (lo, hi); None when the search is done."""
        left = self.untested()
        if not left:
            return None
        mid = (self.lo + self.hi) / 2
        return min(left, key=lambda i: (abs(i - mid), i))

    def steps_left(self) -> int:
        """Test steps still needed at most, when no further commit is skipped."""
        n = len(self.untested())
        return math.ceil(math.log2(n + 1)) if n else 0

    def done(self) -> bool:
        return self.next_index() is None

    def answer(self) -> tuple[int, int]:
        """(first, last): the first bad commit is one of commits[first..last] (one when
        first == last: found exactly)."""
        return self.lo + 1, self.hi
