#!/usr/bin/env bash
# Renders Instar's nginx configuration: N gateway nodes and M social processes behind one origin.
#
#   render.sh [OPTIONS] LISTEN GATEWAY...                  -> prints the http-context snippet
#   render.sh --standalone DIR [OPTIONS] LISTEN GATEWAY... -> writes DIR/nginx.conf and DIR/instar.conf
#
# LISTEN is what nginx listens on (e.g. 80 or 127.0.0.1:8000); each GATEWAY is host:port of one
# `instar gateway`. Options:
#   --social HOST:PORT     an `instar social` process (repeat for each; /api and /media go there)
#   --media-origin URL     serve /media/** from this URL instead (an S3 bucket, path-style:
#                          http://s3:9000/instar-media); set INSTAR_S3_PUBLIC_URL={site}/media
#   --static DIR           serve the built frontend from DIR (SPA fallback to index.html)
#   --tls CERT KEY         listen with TLS (and HTTP/2) using these PEM files
# Example: render.sh --standalone /tmp/ngx --social 127.0.0.1:8091 --social 127.0.0.1:8092 \
#            127.0.0.1:8000 127.0.0.1:8081 127.0.0.1:8082
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
  sed -n '2,14p' "$0" >&2
  exit 2
}
die() {
  echo "render.sh: $*" >&2
  exit 2
}
# A value that goes into the configuration as one token: no whitespace, quotes, `;`, braces or `$`.
token() {
  case $2 in
    '' | *[[:space:]\;\{\}\"\'\$\#\&\\]*) die "$1: '$2' is not a plain value" ;;
  esac
}

standalone=""
social=()
media_origin=""
static_dir=""
tls_cert=""
tls_key=""
while [ $# -gt 0 ]; do
  case $1 in
    --standalone) [ $# -ge 2 ] || usage; standalone=$2; shift 2 ;;
    --social) [ $# -ge 2 ] || usage; token --social "$2"; social+=("$2"); shift 2 ;;
    --media-origin)
      [ $# -ge 2 ] || usage
      token --media-origin "$2"
      case $2 in http://* | https://*) ;; *) die "--media-origin must be an http(s) URL" ;; esac
      media_origin=${2%/}
      shift 2
      ;;
    --static)
      [ $# -ge 2 ] || usage
      [ -f "$2/index.html" ] || die "--static $2: no index.html there"
      static_dir=$(cd "$2" && pwd)
      token --static "$static_dir"
      shift 2
      ;;
    --tls)
      [ $# -ge 3 ] || usage
      for f in "$2" "$3"; do [ -r "$f" ] || die "--tls: cannot read $f"; done
      tls_cert=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
      tls_key=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
      token --tls "$tls_cert"
      token --tls "$tls_key"
      shift 3
      ;;
    -h | --help) usage ;;
    --*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || usage
listen=$1
token LISTEN "$listen"
shift
for node in "$@"; do token GATEWAY "$node"; done
[ ${#social[@]} -gt 0 ] ||
  echo "render.sh: warning: no --social process: /api answers 503" >&2

servers() {
  local out="" s
  for s in "$@"; do
    [ -n "$out" ] && out+=$'\n    '
    out+="server $s max_fails=1 fail_timeout=5s;"
  done
  printf '%s' "$out"
}

# Blocks: `# @if NAME` ... [`# @else` ...] `# @end`, nested; NAME is on when listed in $on.
on=" "
[ ${#social[@]} -gt 0 ] && on+="social "
[ -n "$media_origin" ] && on+="media_origin "
[ -n "$static_dir" ] && on+="static "
[ -n "$tls_cert" ] && on+="tls "

snippet=$(awk -v on="$on" -v gw="$(servers "$@")" \
  -v so="$(servers ${social[@]+"${social[@]}"})" -v listen="$listen" \
  -v media="$media_origin" -v static="$static_dir" -v cert="$tls_cert" -v key="$tls_key" '
  function fill(line) {
    gsub(/@LISTEN@/, listen, line); gsub(/@MEDIA_ORIGIN@/, media, line)
    gsub(/@STATIC_DIR@/, static, line); gsub(/@TLS_CERT@/, cert, line); gsub(/@TLS_KEY@/, key, line)
    if (index(line, "@GATEWAY_SERVERS@")) sub(/@GATEWAY_SERVERS@/, gw, line)
    if (index(line, "@SOCIAL_SERVERS@")) sub(/@SOCIAL_SERVERS@/, so, line)
    return line
  }
  BEGIN { depth = 0; keep[0] = 1 }
  /^# @if / {
    depth++; cond[depth] = index(on, " " $3 " ") > 0
    keep[depth] = keep[depth - 1] && cond[depth]; next
  }
  /^# @else$/ { keep[depth] = keep[depth - 1] && !cond[depth]; next }
  /^# @end$/ { depth--; next }
  keep[depth] { print fill($0) }
  END { if (depth != 0) { print "unbalanced @if/@end" > "/dev/stderr"; exit 1 } }
' "$HERE/instar.conf.template")

if [ -z "$standalone" ]; then
  printf '%s\n' "$snippet"
else
  mkdir -p "$standalone"
  standalone=$(cd "$standalone" && pwd)
  printf '%s\n' "$snippet" >"$standalone/instar.conf"
  sed -e "s|@PREFIX@|$standalone|g" "$HERE/nginx.conf.template" >"$standalone/nginx.conf"
  echo "wrote $standalone/nginx.conf and $standalone/instar.conf"
fi
