"""Command-line front ends: thin argparse layers over the library modules."""
