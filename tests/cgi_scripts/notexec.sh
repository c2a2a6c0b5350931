#!/bin/sh
printf 'Content-Type: text/plain\n\nSECRET SOURCE WAS RUN\n'
