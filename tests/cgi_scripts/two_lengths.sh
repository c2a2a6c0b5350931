#!/bin/sh
# Two Content-Length fields that differ: the body's length is unknown (502).
printf 'Content-Type: text/plain\nContent-Length: 5\nContent-Length: 6\n\nhello'
