#!/bin/sh
# build-base-image.sh - build the image the Dockerfile starts FROM
# (debian:bookworm-slim) out of Debian packages, for a machine that has a
# Docker engine and a Debian package mirror but no container registry.
#
#   sh deploy/build-base-image.sh            build it unless the tag exists
#   sh deploy/build-base-image.sh --force    build it again
#
# On a machine that can pull images this script is not needed: the real
# debian:bookworm-slim is used, with its own apt sources.
#
# How: debootstrap --variant=minbase of the suite into a temporary directory,
# trimmed the way the official slim image is (no docs, man pages or
# locales), then `docker import`. The package mirror is not written anywhere
# in the repository: it is read at run time from this machine's apt
# configuration (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list and
# *.sources), and the Debian entries found there become the image's
# /etc/apt/sources.list.d/debian.sources, so that `apt-get install` in the
# Dockerfile reaches the same mirror. The host's Acquire::Check-Valid-Until,
# Acquire::Check-Date and proxy settings are carried over too (a snapshot
# mirror needs the first two).
#
# Settings: CLAWRELAY_BASE_IMAGE (tag, default debian:bookworm-slim),
# CLAWRELAY_BASE_SUITE (default bookworm). Needs root (debootstrap); installs
# debootstrap with apt-get when it is missing.
set -eu

TAG=${CLAWRELAY_BASE_IMAGE:-debian:bookworm-slim}
SUITE=${CLAWRELAY_BASE_SUITE:-bookworm}
FORCE=0
for a in "$@"; do
	case $a in
	--force) FORCE=1 ;;
	-h|--help) sed -n '2,27p' "$0"; exit 0 ;;
	*) echo "build-base-image: unknown argument $a" >&2; exit 2 ;;
	esac
done

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
	echo "base image: $TAG is there already (--force builds it again)"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "build-base-image: debootstrap needs root; run it with sudo" >&2
	exit 1
fi

# --- the Debian entries of this machine's apt configuration ----------------
# Prints one line per entry: "URI<TAB>suite<TAB>components".
apt_entries() {
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		# one-line format: deb [options] uri suite component...
		sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 4 {
			c = $4; for (i = 5; i <= NF; i++) c = c " " $i
			print $2 "\t" $3 "\t" c }'
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		# deb822: stanzas separated by blank lines; continuation lines
		# (a leading space) belong to the field before them and are skipped
		awk '
		function flush() {
			if (types ~ /(^| )deb( |$)/ && enabled !~ /^[Nn]o/ && uris != "" && suites != "") {
				nu = split(uris, u, " "); ns = split(suites, s, " ")
				for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
					print u[i] "\t" s[j] "\t" comps
			}
			types = uris = suites = comps = enabled = ""
		}
		/^[ \t]*#/ { next }
		/^[ \t]*$/ { flush(); next }
		/^[ \t]/ { next }
		{
			k = tolower($1); sub(/:$/, "", k); v = $0; sub(/^[^:]*:[ \t]*/, "", v)
			if (k == "types") types = v
			else if (k == "uris") uris = v
			else if (k == "suites") suites = v
			else if (k == "components") comps = v
			else if (k == "enabled") enabled = v
		}
		END { flush() }' "$f"
	done
}

entries=$(apt_entries | awk -F '\t' -v s="$SUITE" '$2 == s || index($2, s "-") == 1' | sort -u)
MIRROR=$(printf '%s\n' "$entries" | awk -F '\t' -v s="$SUITE" '$2 == s { print $1; exit }')
if [ -z "$MIRROR" ]; then
	echo "build-base-image: no 'deb' entry for suite $SUITE in /etc/apt/sources.list or" >&2
	echo "  /etc/apt/sources.list.d/: this script takes the package mirror from there" >&2
	exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
	echo "base image: installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

ROOT=$(mktemp -d /tmp/clawrelay-base.XXXXXX)
cleanup() {
	for m in proc sys dev/pts dev; do
		mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m" 2>/dev/null
	done
	rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
set -- --variant=minbase --components=main
[ -f "$KEYRING" ] && set -- "$@" --keyring="$KEYRING"
echo "base image: debootstrap $SUITE (minbase) from this machine's apt mirror"
start=$(date +%s)
if ! debootstrap "$@" "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1; then
	echo "build-base-image: debootstrap failed; the end of its log:" >&2
	tail -20 "$ROOT.log" >&2
	grep -h . "$ROOT/debootstrap/debootstrap.log" 2>/dev/null | tail -10 >&2
	rm -f "$ROOT.log"
	exit 1
fi
rm -f "$ROOT.log"

# apt sources: the host's Debian entries for this suite, signed by the archive key
rm -f "$ROOT/etc/apt/sources.list"
mkdir -p "$ROOT/etc/apt/sources.list.d" "$ROOT/etc/apt/apt.conf.d" "$ROOT/etc/dpkg/dpkg.cfg.d"
printf '%s\n' "$entries" | awk -F '\t' '{
	printf "%sTypes: deb\nURIs: %s\nSuites: %s\nComponents: %s\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
	    (NR > 1 ? "\n" : ""), $1, $2, ($3 == "" ? "main" : $3) }' >"$ROOT/etc/apt/sources.list.d/debian.sources"
apt-config dump 2>/dev/null | grep -Ei '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' \
    >"$ROOT/etc/apt/apt.conf.d/50host-apt" || true
[ -s "$ROOT/etc/apt/apt.conf.d/50host-apt" ] || rm -f "$ROOT/etc/apt/apt.conf.d/50host-apt"

# what the official slim image does: no docs, man pages or translations,
# no caches or package lists left in the image
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
cat >"$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf 'Acquire::Languages "none";\n' >"$ROOT/etc/apt/apt.conf.d/docker-no-languages"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$ROOT/etc/apt/apt.conf.d/docker-no-recommends"
find "$ROOT/usr/share/doc" -mindepth 2 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOT/usr/share/man/"* "$ROOT/usr/share/info/"* "$ROOT/usr/share/locale/"* \
    "$ROOT/usr/share/groff/"* "$ROOT/usr/share/lintian/"* \
    "$ROOT/var/cache/apt/"*.bin "$ROOT/var/cache/apt/archives/"*.deb \
    "$ROOT/var/lib/apt/lists/"* "$ROOT/var/log/"*.log "$ROOT/debootstrap"
# the host's name and resolver are not the image's (Docker provides both)
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hostname"

echo "base image: importing as $TAG"
tar -C "$ROOT" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
    docker import \
	--change 'CMD ["bash"]' \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'LABEL org.clawrelay.base="debootstrap minbase '"$SUITE"' (deploy/build-base-image.sh)"' \
	- "$TAG" >/dev/null
echo "base image: $TAG built in $(( $(date +%s) - start )) s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1 / 1e6}'))"
