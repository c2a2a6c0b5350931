#!/usr/bin/python3
# The benchmark runner replaces the line above with an absolute interpreter path when it copies
# this script into the document root (/usr/bin/python3 when it exists).
import sys

sys.stdout.write("Content-Type: text/plain\r\n\r\nHello, world!\n")
