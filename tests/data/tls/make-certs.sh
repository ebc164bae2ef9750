#!/bin/sh
# Makes throwaway certificates for the TLS tests into DIR (created if needed).
# Nothing here is committed: the tests run this into a temporary directory.
#   ca.crt ca.key          a test CA
#   server.crt server.key  signed by the CA, for DNS:localhost and IP:127.0.0.1
#   bad.crt bad.key        self-signed, same names: trusted by nobody
# EC P-256 keys: generated in milliseconds, supported by mbedTLS 2.28.
set -eu
dir=${1:?usage: make-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
san="subjectAltName=DNS:localhost,IP:127.0.0.1"
openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj "/CN=llmux test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req $ec -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf '%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile server.ext -out server.crt 2>/dev/null
openssl req -x509 $ec -keyout bad.key -out bad.crt -days 2 -subj "/CN=localhost" \
  -addext "$san" 2>/dev/null
rm -f server.csr server.ext ca.srl
