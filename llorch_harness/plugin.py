"""pytest plugin entry point (pytest11). Hooks stay thin; logic lives in plain modules."""
