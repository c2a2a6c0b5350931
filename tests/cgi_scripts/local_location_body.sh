#!/bin/sh
printf 'Location: /somewhere\n\nsee /somewhere'
