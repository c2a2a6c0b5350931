#!/bin/sh
echo "stderr line one" >&2
printf 'stderr \033[31mwith escape\n' >&2
printf 'Content-Type: text/plain\n\nok\n'
