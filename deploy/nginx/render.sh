#!/usr/bin/env bash
# Renders Instar's nginx configuration for N gateway nodes.
#
#   render.sh LISTEN NODE...                      -> prints the http-context snippet (instar.conf)
#   render.sh --standalone DIR LISTEN NODE...     -> writes DIR/nginx.conf and DIR/instar.conf
#
# LISTEN is what nginx listens on (e.g. 80 or 127.0.0.1:8000); each NODE is host:port of one
# `instar gateway`. Example: render.sh --standalone /tmp/ngx 127.0.0.1:8000 127.0.0.1:8081 127.0.0.1:8082
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
standalone=""
if [ "${1:-}" = --standalone ]; then
  standalone=$2
  shift 2
fi
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
listen=$1
shift
servers=""
for node in "$@"; do
  [ -n "$servers" ] && servers+=$'\n    '
  servers+="server $node max_fails=1 fail_timeout=5s;"
done
snippet=$(sed -e "s|@LISTEN@|$listen|" "$HERE/instar.conf.template" |
  awk -v s="$servers" '{ if (index($0, "@UPSTREAM_SERVERS@")) { sub(/@UPSTREAM_SERVERS@/, s) } print }')
if [ -z "$standalone" ]; then
  printf '%s\n' "$snippet"
else
  mkdir -p "$standalone"
  printf '%s\n' "$snippet" >"$standalone/instar.conf"
  sed -e "s|@PREFIX@|$standalone|g" "$HERE/nginx.conf.template" >"$standalone/nginx.conf"
  echo "wrote $standalone/nginx.conf and $standalone/instar.conf"
fi
