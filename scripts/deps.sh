#!/bin/sh
# deps.sh - install every Debian package the build, the tests and the demo need.
# Idempotent: does nothing when everything is present; runs apt-get update only
# when a package is missing (or apt's lists are empty).
set -eu
PKGS="build-essential pkg-config protobuf-c-compiler libprotobuf-c-dev libnats-dev
libcivetweb-dev liblmdb-dev lmdb-utils check libssl-dev openssl libcurl4-openssl-dev
libwebsockets-dev libcjson-dev libsodium-dev nats-server curl valgrind strace python3 procps
chromium fonts-dejavu-core"
missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "deps: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
