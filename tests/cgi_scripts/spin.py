"""Burns CPU forever; only RLIMIT_CPU (or the timeout) stops it."""

import sys

sys.stdout.write("Content-Type: text/plain\n\n")
sys.stdout.flush()
while True:
    pass
