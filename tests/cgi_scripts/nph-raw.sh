#!/bin/sh
printf 'HTTP/1.1 299 Very Custom\r\n'
printf 'Content-Type: text/plain\r\n'
printf 'X-Nph: yes\r\n'
printf '\r\n'
printf 'straight from the script'
