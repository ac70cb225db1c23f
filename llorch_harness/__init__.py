"""llorch-harness: the CP3 hardware acceptance harness for llorch-candled workers."""

__version__ = "0.1.0"
