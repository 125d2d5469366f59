#!/bin/sh
# setup.sh - the demo profile's one-shot set-up (service demo-setup): keys
# for alice and bob in the demo-keys volume (made once, kept across runs),
# both registered in the NATS registry, each trusted to send to the other.
set -eu
K=/var/lib/clawrelay/keys
for a in alice bob; do
	[ -s "$K/$a.key" ] || clawrelay keygen --out "$K/$a" >/dev/null
	clawrelay agent add "$a" --pubkey "$K/$a.pub" --replace
done
clawrelay trust add alice bob
clawrelay trust add bob alice
echo "demo: alice and bob registered; each may send to the other"
