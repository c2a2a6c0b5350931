#!/bin/sh
# Sleeps before answering (QUERY_STRING seconds, default 30), so a timeout kills it.
echo $$ > "${PIDFILE:-/dev/null}"
sleep "${QUERY_STRING:-30}"
printf 'Content-Type: text/plain\n\nwoke up\n'
