#!/bin/sh
# RFC 3875 4.4 would pass an indexed query as arguments; porch never does.
printf 'Content-Type: text/plain\n\nargc=%s first=%s\n' "$#" "$1"
