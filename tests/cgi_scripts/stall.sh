#!/bin/sh
# Sends its head and some body, then stalls.
printf 'Content-Type: text/plain\n\n'
printf 'first part\n'
exec sleep 30
