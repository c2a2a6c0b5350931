#!/bin/sh
# porch sample: shows the CGI environment (the RFC 3875 meta-variables and HTTP_* fields).
# Every value is HTML-escaped before any markup is added around it.

escape() {
    sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' -e "s/'/\&#39;/g"
}

printf 'Content-Type: text/html; charset=utf-8\r\n'
printf 'Cache-Control: no-store\r\n'
printf '\r\n'
[ "$REQUEST_METHOD" = "HEAD" ] && exit 0  # RFC 3875 4.3.3: no body for HEAD

script=$(printf '%s' "$SCRIPT_NAME" | escape)
cat <<EOF
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CGI environment</title>
<style>body{font-family:sans-serif;margin:2em} th{text-align:left;padding-right:1em;vertical-align:top}
td code{word-break:break-all}</style></head>
<body><h1>CGI environment</h1>
<p>What <code>$script</code> received from the server.
Try <a href="$script/extra/path?a=1&amp;b=%C3%A9">an extra path and a query</a>.</p>
<table>
EOF
env | LC_ALL=C sort | escape | sed -e 's|^\([A-Za-z_][A-Za-z0-9_]*\)=\(.*\)$|<tr><th>\1</th><td><code>\2</code></td></tr>|'
cat <<EOF
</table>
<p><a href="/">Back</a></p></body></html>
EOF
