#!/bin/sh
# One length given three times, twice as a list: folded into one field (RFC 9110 8.6).
printf 'Content-Type: text/plain\nContent-Length: 5\nX-Between: kept\nContent-Length: 5, 5\n\nhello'
