"""The ``cgi`` handler: CGI/1.1 (RFC 3875) scripts, their processes and their output."""
