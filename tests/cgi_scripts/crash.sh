#!/bin/sh
echo "something went badly wrong" >&2
exit 3
