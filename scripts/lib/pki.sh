# shellcheck shell=bash
# A throwaway certificate authority for etcd with TLS (the secure netns lab and the
# registry's TLS tests): EC P-256 keys, certificates valid for 7 days.
#
#   pki_make DIR IP...   writes into DIR (0700): ca.pem/ca-key.pem, server.pem/server-key.pem
#                        (SANs: the IPs; serverAuth+clientAuth) and client.pem/client-key.pem
#                        (CN vxmesh-node; clientAuth). openssl's output goes to DIR/openssl.log.
#                        Returns non-zero, with the log's last lines on stderr, on failure.
pki_make() {
  local d=$1 sans="" ip name cn ext; shift
  for ip in "$@"; do sans="${sans:+$sans,}IP:$ip"; done
  mkdir -p "$d" && chmod 0700 "$d" || return 1
  _pki_ossl() {
    openssl "$@" >>"$d/openssl.log" 2>&1 || { echo "openssl $1 failed: $(tail -n 3 "$d/openssl.log")" >&2; return 1; }
  }
  _pki_ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=vxmesh-etcd-ca-$RANDOM" -keyout "$d/ca-key.pem" -out "$d/ca.pem" || return 1
  for name in server client; do
    if [ "$name" = server ]; then
      cn=etcd; ext="subjectAltName=$sans\nextendedKeyUsage=serverAuth,clientAuth"
    else
      cn=vxmesh-node; ext="extendedKeyUsage=clientAuth"
    fi
    printf '%b\nbasicConstraints=CA:FALSE\n' "$ext" >"$d/$name.ext"
    _pki_ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
      -keyout "$d/$name-key.pem" -out "$d/$name.csr" || return 1
    _pki_ossl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" -CAcreateserial \
      -days 7 -extfile "$d/$name.ext" -out "$d/$name.pem" || return 1
  done
}
