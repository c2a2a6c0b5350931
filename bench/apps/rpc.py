"""The XML-RPC function both XML-RPC servers of the benchmark expose."""


def add(a: int, b: int) -> int:
    """Return a + b."""
    return a + b
