"""Not executable: runs only through the interpreter configured for .py."""

import sys

sys.stdout.write("Content-Type: text/plain\n\ninterpreted by python\n")
