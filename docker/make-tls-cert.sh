#!/usr/bin/env bash
# docker/make-tls-cert.sh OUT_DIR [DNS_NAME_OR_IP...]: a throw-away certificate authority and a
# server certificate it signed, for the balancer's TLS in a test or a private network:
#   OUT_DIR/ca.pem                  the CA certificate clients verify against (curl --cacert, httpx verify=)
#   OUT_DIR/cert.pem, OUT_DIR/key.pem   the balancer's certificate and key (compose secrets,
#                                   docker/.env.example DGAE_TLS_CERT_FILE / DGAE_TLS_KEY_FILE)
# The certificate names localhost and 127.0.0.1 plus the names given. The CA's key is deleted: no
# further certificate can be signed with it. For a public endpoint use a certificate from a real CA
# (e.g. Let's Encrypt) instead: same two files. Needs openssl.
set -euo pipefail

DAYS=${DGAE_TLS_DAYS:-30}
CURVE=prime256v1

(($# >= 1)) || { echo "usage: $0 OUT_DIR [DNS_NAME_OR_IP...]" >&2; exit 2; }
out=$1
shift
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
done

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
openssl req -x509 -newkey ec -pkeyopt "ec_paramgen_curve:$CURVE" -nodes -days "$DAYS" \
    -keyout "$work/ca-key.pem" -out "$work/ca.pem" -subj "/CN=dgae throw-away test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt "ec_paramgen_curve:$CURVE" -nodes -keyout "$work/key.pem" \
    -out "$work/server.csr" -subj "/CN=localhost" 2>/dev/null
cat >"$work/ext.cnf" <<EXT
subjectAltName=$san
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EXT
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -CAcreateserial \
    -days "$DAYS" -extfile "$work/ext.cnf" -out "$work/cert.pem" 2>/dev/null
openssl verify -CAfile "$work/ca.pem" "$work/cert.pem" >/dev/null
install -m 644 "$work/ca.pem" "$out/ca.pem"
install -m 644 "$work/cert.pem" "$out/cert.pem"
# Read by nginx's master process (root) from the secret mount; not by anyone else.
install -m 600 "$work/key.pem" "$out/key.pem"
echo "wrote $out/ca.pem, $out/cert.pem and $out/key.pem ($san, $DAYS days)"
