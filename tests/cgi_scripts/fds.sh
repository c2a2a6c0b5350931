#!/bin/sh
# Lists the descriptors the script inherited (the ls itself opens one more).
printf 'Content-Type: text/plain\n\n'
ls /proc/self/fd
