#!/bin/sh
# Records its pid, then stays silent for a long time before writing anything: a client that
# hangs up meanwhile must not leave it running until its timeout.
echo $$ > "${QUIET_PID_FILE:?}"
sleep 30
printf 'Content-Type: text/plain\n\ntoo late\n'
