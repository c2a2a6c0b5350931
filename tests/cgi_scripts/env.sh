#!/bin/sh
# Prints its environment, one VAR=value per line, then its working directory and arguments.
printf 'Content-Type: text/plain\n\n'
env
printf 'CWD=%s\n' "$(pwd)"
printf 'ARGC=%s\n' "$#"
