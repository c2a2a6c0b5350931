#!/bin/sh
printf 'Content-Type: text/plain\n\nSCRIPT_NAME=%s\nPATH_INFO=%s\n' "$SCRIPT_NAME" "$PATH_INFO"
