"""porch: a pluggable HTTP/1.1 application server daemon (the daemon core)."""

from porch.variant import BUILD as BUILD  # "pure" or "compiled" (mypyc): which build this is

__version__ = "0.1.0"
SOFTWARE = f"porch/{__version__}"  # SERVER_SOFTWARE, and how the logs name the server
