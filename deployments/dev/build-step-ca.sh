#!/usr/bin/env bash
# Builds a step-ca binary offline from Debian 12's packaged Go sources (docs/step-ca.md,
# local-components.md §8.1): Debian ships the smallstep/certificates library (0.19.0) but not its
# cmd/step-ca main program, so deployments/dev/step-ca/main.go is ours.
#
#   deployments/dev/build-step-ca.sh [OUTPUT]     # default: $STEP_CA_OUT or <repo>/.tools/step-ca
#
# Idempotent: nothing is built when OUTPUT exists and is newer than main.go, and only missing
# packages are installed (as root with apt-get; otherwise they must be there already).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
src="$here/step-ca/main.go"
out="${1:-${STEP_CA_OUT:-$repo/.tools/step-ca}}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if [ -x "$out" ] && [ "$out" -nt "$src" ]; then
  echo "step-ca: $out is up to date (newer than $src); nothing to build"
  exit 0
fi

packages=(golang-go golang-github-smallstep-certificates-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "step-ca: needs the Debian packages ${missing[*]} (as root: apt-get install --no-install-recommends ${missing[*]})" >&2
    exit 1
  fi
  t0="$(now)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "step-ca: installed ${missing[*]} in $(elapsed "$t0") s"
fi

# GOPATH mode against Debian's source tree (/usr/share/gocode/src): no modules, no network.
# The main package has to sit inside a GOPATH, so a throwaway one holds it beside Debian's.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/certlc-step-ca"
cp "$src" "$work/src/certlc-step-ca/main.go"
export GO111MODULE=off
export GOPATH="$work:/usr/share/gocode"
export GOCACHE="${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/certlc-step-ca-go}"
# Offline: no proxy, no checksum database, no toolchain download, no VCS stamping.
export GOFLAGS="-buildvcs=false" GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local
# No cgo: a pure-Go binary, and no C compiler needed (--no-install-recommends leaves gcc out).
export CGO_ENABLED=0
mkdir -p "$GOCACHE" "$(dirname "$out")"

t0="$(now)"
(cd "$work/src/certlc-step-ca" && go build -trimpath -o "$out.tmp" .)
mv -f "$out.tmp" "$out"
echo "step-ca: built $out ($(go version | awk '{print $3}'), $(du -h "$out" | cut -f1)) in $(elapsed "$t0") s"
"$out" --version
