"""The CP3 gate suite.

This flag makes every pytest run that loads this file before collection (`pytest`,
`pytest -m cuda`, `pytest tests_hw/...`) a gate run of the llorch_harness plugin; other
pytest runs in the same environment are left alone (llorch_harness/plugin/activation.py).
"""

llorch_gate_suite = True
