#!/bin/sh
# Reports its pid (and a child's) in the body, then keeps running, for kill-on-disconnect tests.
sleep 60 &
printf 'Content-Type: text/plain\n\n%s %s\n' "$$" "$!"
exec sleep 60
