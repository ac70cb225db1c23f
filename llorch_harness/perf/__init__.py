"""Performance history of worker builds: figures, the results store, the baseline rule, plots.

Why a package of its own: the gate's other checks judge one run; this one remembers every
run per model, backend and pool and compares (issue 17). Nothing here is imported when the
pytest plugin loads: the plugin reaches it lazily, when a gate run measures or reports.
"""
