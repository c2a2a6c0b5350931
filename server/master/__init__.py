"""The master process: the pre-fork arbiter, daemon mode (pidfile, detaching, privileges) and sd_notify."""
