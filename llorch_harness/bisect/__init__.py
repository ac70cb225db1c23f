"""`llorch-harness bisect`: the first llama-orch commit that breaks a gate item, found by
building each commit in a worktree of its own and judging it with the gate itself."""
