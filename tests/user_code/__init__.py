"""Pyro programs written the way Pyro users write them, used by the tests as user code."""
