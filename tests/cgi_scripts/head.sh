#!/bin/sh
printf 'Content-Type: text/plain\nContent-Length: 5\n\nhello'
