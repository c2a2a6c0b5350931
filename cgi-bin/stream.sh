#!/bin/sh
# porch sample: a response streamed while the script runs -- one line every half second.
# porch sends each line as it is written (chunked on HTTP/1.1), so `curl -N` shows them arrive.
printf 'Content-Type: text/plain; charset=utf-8\r\n'
printf 'Cache-Control: no-store\r\n'
printf 'X-Content-Type-Options: nosniff\r\n'
printf '\r\n'
if [ "$REQUEST_METHOD" = "HEAD" ]; then
    exit 0
fi
count=${QUERY_STRING:-6}
case "$count" in
    ''|*[!0-9]*) count=6 ;;
esac
[ "$count" -gt 20 ] && count=20
i=1
while [ "$i" -le "$count" ]; do
    printf 'line %s of %s at %s\n' "$i" "$count" "$(date +%H:%M:%S)"
    [ "$i" -lt "$count" ] && sleep 0.5
    i=$((i + 1))
done
