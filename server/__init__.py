"""porch: a pluggable HTTP/1.1 application server daemon (the daemon core)."""

__version__ = "0.1.0"
