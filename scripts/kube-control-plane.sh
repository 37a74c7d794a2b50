#!/usr/bin/env bash
# Runs a Kubernetes control plane on 127.0.0.1 in the foreground for the operator's tests: etcd,
# kube-apiserver (authentication by tokens, RBAC, the default admission plugins with
# ValidatingAdmissionPolicy and ResourceQuota, service-account tokens) and
# kube-controller-manager (Deployments make ReplicaSets and Pods). No scheduler and no kubelet:
# the test harness binds pods and plays their kubelet. The binaries come from `make deps` (built
# from the Go module proxy into the cache).
#
#   scripts/kube-control-plane.sh DIR API_PORT ETCD_PORT [-- APISERVER_FLAG ...]
#
# Writes DIR/admin.kubeconfig (a system:masters token) once the API server is ready, then waits;
# stopping it (SIGTERM) stops all three. Logs: DIR/{etcd,apiserver,controller-manager}.log.
# Environment: SLUICE_CACHE (default ~/.cache/sluice), KUBERNETES_VERSION (1.36.3).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 DIR API_PORT ETCD_PORT [-- APISERVER_FLAG ...]" >&2; exit 2; }
DIR=$1 PORT=$2 ETCD=$3; shift 3
if [ $# -ge 1 ]; then [ "$1" = -- ] || { echo "error: extra flags go after --" >&2; exit 2; }; shift; fi
BIN=${SLUICE_CACHE:-$HOME/.cache/sluice}/kubernetes-${KUBERNETES_VERSION:-1.36.3}
[ -f "$BIN/.complete" ] || { echo "error: $BIN: no control plane: run \`make deps\` (it builds kube-apiserver, kube-controller-manager and etcd from the Go module proxy)" >&2; exit 1; }
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
pki=$DIR/pki
if [ ! -f "$pki/.complete" ]; then
  mkdir -p "$pki"
  # A CA, the API server's serving certificate for 127.0.0.1, the service-account signing key.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sluice-test-ca \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$pki/ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  token=$(openssl rand -hex 16)
  echo "$token,admin,admin,system:masters" >"$pki/tokens.csv"
  touch "$pki/.complete"
fi
token=$(cut -d, -f1 "$pki/tokens.csv")

pids=()
# Stop all three; one that has not exited 10 s later (an API server whose etcd is gone can hang
# in its graceful shutdown) is killed.
stop() {
  kill "${pids[@]}" 2>/dev/null
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || break
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2>/dev/null
  wait
}
trap stop EXIT TERM INT
"$BIN/etcd" --name test --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD" --advertise-client-urls "http://127.0.0.1:$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD + 1))" \
  --initial-cluster "test=http://127.0.0.1:$((ETCD + 1))" \
  --quota-backend-bytes 1073741824 --log-level warn >>"$DIR/etcd.log" 2>&1 &
pids+=($!)
"$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$PORT" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --enable-priority-and-fairness=false \
  --endpoint-reconciler-type none \
  "$@" >>"$DIR/apiserver.log" 2>&1 &
pids+=($!)
kubeconfig=$DIR/admin.kubeconfig
cat >"$kubeconfig.tmp" <<KC
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: 'https://127.0.0.1:$PORT', certificate-authority: '$pki/ca.crt'}
users:
- name: admin
  user: {token: '$token'}
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
KC
for _ in $(seq 1 600); do
  kill -0 "${pids[1]}" 2>/dev/null || { echo "error: kube-apiserver exited: see $DIR/apiserver.log" >&2; exit 1; }
  if curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" "https://127.0.0.1:$PORT/readyz" >/dev/null; then
    break
  fi
  sleep 0.1
done
mv "$kubeconfig.tmp" "$kubeconfig"
"$BIN/kube-controller-manager" --kubeconfig "$kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --controllers '*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route' \
  >>"$DIR/controller-manager.log" 2>&1 &
pids+=($!)
wait -n "${pids[@]}"
echo "error: a control-plane process exited: see $DIR/*.log" >&2
exit 1
