"""Sockets: the listeners a master binds, TLS contexts, and the I/O of one client connection."""
