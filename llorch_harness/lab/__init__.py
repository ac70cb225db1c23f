"""The embedded lab's parts: the local hub, the tiny model, the reference worker."""
