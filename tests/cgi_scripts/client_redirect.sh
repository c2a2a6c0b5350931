#!/bin/sh
printf 'Location: http://example.org/elsewhere?x=1\n\n'
