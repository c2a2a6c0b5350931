#!/bin/sh
# Content-Length: the byte 0xB2, "²" in latin-1: a Unicode digit but not an ASCII one (502).
printf 'Content-Type: text/plain\nContent-Length: \262\n\nab'
