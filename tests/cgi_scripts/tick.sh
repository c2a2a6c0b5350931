#!/bin/sh
# Reports its pid, then writes a line every 0.1 s until it is killed.
printf 'Content-Type: text/plain\n\n%s\n' "$$"
while :; do
    printf 'tick\n'
    sleep 0.1
done
