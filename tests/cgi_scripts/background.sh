#!/bin/sh
# Leaves a job running in its process group and exits.
sleep 60 </dev/null >/dev/null 2>&1 &
printf 'Content-Type: text/plain\n\n%s\n' "$!"
