#!/bin/sh
printf 'Content-Type: text/plain\n\n'
printf 'nofile=%s\ncpu=%s\n' "$(ulimit -n)" "$(ulimit -t)"
