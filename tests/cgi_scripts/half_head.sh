#!/bin/sh
printf 'Content-Type: text/plain\nX-Never: finished'
