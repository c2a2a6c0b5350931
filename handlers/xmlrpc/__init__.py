"""The ``xmlrpc`` handler: the standard library's dispatcher behind HTTP, and a fast reader for plain calls."""
