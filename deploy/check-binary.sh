#!/usr/bin/env bash
# Checks that an `instar` binary needs nothing at run time beyond glibc and libgcc, i.e. what the
# distroless "cc" image (and any Linux with glibc >= the build machine's) provides:
#
#   deploy/check-binary.sh BINARY                  ldd check only
#   deploy/check-binary.sh --rootfs DIR BINARY     also build the runtime image's layout in DIR
#                                                  (the binary, the libraries ldd names, CA
#                                                  certificates, a non-root user) and, as root,
#                                                  run `instar serve` in it (chroot as uid 65532)
#                                                  until `instar probe` finds /health/ready
#
# Exits non-zero naming whatever else the binary links.
set -euo pipefail
rootfs=""
if [ "${1:-}" = --rootfs ]; then
  rootfs=$2
  shift 2
fi
[ $# -eq 1 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
bin=$1
[ -x "$bin" ] || { echo "check-binary: $bin is not an executable" >&2; exit 2; }
command -v ldd >/dev/null || { echo "check-binary: ldd not found (libc-bin)" >&2; exit 2; }

# glibc's own libraries (split out before 2.34), libgcc's unwinder, the loader and the vDSO.
allowed='^(linux-vdso\.so\.1|linux-gate\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libgcc_s\.so\.1|ld-linux[-a-z0-9_.]*\.so\.[0-9]+)$'
libs=$(ldd "$bin" | awk '{ print $1 }' | sed 's|.*/||')
bad=$(printf '%s\n' "$libs" | grep -Ev "$allowed" || true)
if [ -n "$bad" ]; then
  echo "check-binary: $bin links more than glibc and libgcc:" >&2
  printf '  %s\n' $bad >&2
  exit 1
fi
echo "check-binary: $bin links only: $(printf '%s ' $libs)"

[ -n "$rootfs" ] || exit 0
[ "$(id -u)" = 0 ] || { echo "check-binary: --rootfs needs root (chroot)" >&2; exit 2; }
rm -rf "$rootfs"
mkdir -p "$rootfs"/usr/local/bin "$rootfs"/etc/ssl/certs "$rootfs"/tmp "$rootfs"/var/lib/instar
chmod 1777 "$rootfs"/tmp
install -m 0755 "$bin" "$rootfs"/usr/local/bin/instar
# The libraries at the paths the loader looks them up (what distroless/cc ships).
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs"/etc/ssl/certs/ 2>/dev/null || true
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs"/etc/passwd
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs"/etc/group
chown 65532:65532 "$rootfs"/var/lib/instar
chmod 0700 "$rootfs"/var/lib/instar

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chroot=$(command -v chroot)
in_root() { "$chroot" --userspec=65532:65532 "$rootfs" /usr/local/bin/instar "$@"; }
in_root --version
# The image's environment only (env -i): nothing of this machine's leaks in.
env -i INSTAR_LISTEN=127.0.0.1:$port INSTAR_TCP_LISTEN=off INSTAR_DATA_DIR=/var/lib/instar \
  INSTAR_JWT_SECRET=check-binary-secret-check-binary-secret INSTAR_LOG=warn \
  "$chroot" --userspec=65532:65532 "$rootfs" /usr/local/bin/instar serve &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
in_root probe --wait 30 "http://127.0.0.1:$port/health/ready"
[ -f "$rootfs"/var/lib/instar/instar.db ] || { echo "check-binary: no database in the data directory" >&2; exit 1; }
echo "check-binary: instar serve runs in $rootfs as uid 65532 and is ready"
