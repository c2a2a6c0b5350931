#!/bin/sh
printf 'X-Only: other\n\nbody\n'
