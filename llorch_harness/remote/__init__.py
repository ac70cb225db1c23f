"""Remote pools: the pools file and the one SSH transport."""
