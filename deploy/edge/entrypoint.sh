#!/bin/sh
# entrypoint.sh - the edge proxy (nginx) in front of the gateway replicas.
#
# Writes nginx's configuration for this container and runs nginx in the
# foreground as the unprivileged user of the image:
#   - port 8080: plain HTTP;
#   - port 8443: HTTPS, only when /etc/clawrelay/tls holds tls.crt and tls.key
#     (TLS ends here; the gateways behind it speak plain HTTP);
#   - every request, WebSocket upgrades (GET /v1/connect) included, goes to
#     CLAWRELAY_EDGE_UPSTREAM (default gateway:8080). The name is resolved
#     through Docker's DNS every few seconds, and requests go round-robin to
#     all of its addresses, so `--scale gateway=N` and restarted gateways
#     are picked up without restarting the proxy;
#   - the request line is passed on exactly as the client sent it (the
#     gateway checks a signature over the path and query).
set -eu
UPSTREAM=${CLAWRELAY_EDGE_UPSTREAM:-gateway:8080}
TLS_DIR=${CLAWRELAY_EDGE_TLS_DIR:-/etc/clawrelay/tls}
CONF=/tmp/nginx.conf
RESOLVERS=$(awk '$1 == "nameserver" { printf "%s ", $2 }' /etc/resolv.conf)
[ -n "$RESOLVERS" ] || RESOLVERS=127.0.0.11

tls=""
if [ -s "$TLS_DIR/tls.crt" ] && [ -s "$TLS_DIR/tls.key" ]; then
	tls="
        listen 8443 ssl;
        ssl_certificate     $TLS_DIR/tls.crt;
        ssl_certificate_key $TLS_DIR/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:10m;"
	echo "edge: TLS on 8443 with $TLS_DIR/tls.crt" >&2
else
	echo "edge: no $TLS_DIR/tls.crt and tls.key: plain HTTP only (8080)" >&2
fi

cat >"$CONF" <<CONF
worker_processes auto;
pid /tmp/nginx.pid;
error_log /dev/stderr warn;
events { worker_connections 8192; }
http {
    server_tokens off;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    log_format edge escape=json '{"ts":"\$time_iso8601","svc":"edge","remote":"\$remote_addr",'
        '"request":"\$request","status":\$status,"bytes":\$body_bytes_sent,'
        '"upstream":"\$upstream_addr","ms":"\$request_time",'
        '"correlation_id":"\$http_x_claw_correlation_id","agent":"\$http_x_claw_agent"}';
    access_log /dev/stdout edge;
    resolver $RESOLVERS valid=5s ipv6=off;
    resolver_timeout 5s;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    # larger than any body the gateway takes: its own limit answers 413 in JSON
    client_max_body_size 8m;
    server {
        listen 8080;$tls
        location / {
            set \$gateway $UPSTREAM;
            proxy_pass http://\$gateway;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_request_buffering off;
            proxy_buffering off;
            # a connector's socket stays open for hours (heartbeats every 15 s)
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_connect_timeout 5s;
            # a gateway that is gone: try another one for what can be retried
            proxy_next_upstream error timeout;
        }
    }
}
CONF
exec nginx -c "$CONF" -g 'daemon off;'
