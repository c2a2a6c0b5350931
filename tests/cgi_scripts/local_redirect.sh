#!/bin/sh
printf 'Location: /cgi-bin/env.sh/landed?via=local%%20redirect\n\n'
