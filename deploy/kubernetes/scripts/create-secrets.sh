#!/usr/bin/env bash
# Creates (or updates) the secrets the firstkey Deployment mounts, from key material made with
# `firstkey` on an operator's machine, never in the cluster. Run it once per namespace, and again
# after `firstkey keys rotate` (then `kubectl rollout restart deployment/firstkey`).
# docs/operations.md, "Key material", explains each file.
#
#   deploy/kubernetes/scripts/create-secrets.sh NAMESPACE KEY_DIR AGENT_TLS_CERT AGENT_TLS_KEY
#
# KEY_DIR: the key directory `firstkey keys generate --municipality SLUG` wrote to (run it with
#   FIRSTKEY_KEY_DIR=KEY_DIR and FIRSTKEY_DATABASE_URL pointing at the cluster's database, e.g.
#   through `kubectl port-forward svc/firstkey-db-rw 5432`). It holds `issuer/<kid>.pk8` and
#   `data.kek` (base64 of 32 bytes; made by the first `firstkey` run with that key directory).
# AGENT_TLS_CERT / AGENT_TLS_KEY: the agent channel's PEM certificate chain and key, issued by the
#   CA whose certificate every lock is provisioned with (`firstkey-agent init --server-ca`).
set -euo pipefail
if [ "$#" -ne 4 ]; then
    sed -n '2,15p' "$0" >&2
    exit 2
fi
ns=$1 key_dir=$2 cert=$3 key=$4
[ -d "$key_dir/issuer" ] || { echo "no $key_dir/issuer: run firstkey keys generate first" >&2; exit 1; }
[ -f "$key_dir/data.kek" ] || { echo "no $key_dir/data.kek in $key_dir" >&2; exit 1; }
apply() { kubectl -n "$ns" "$@" --dry-run=client -o yaml | kubectl -n "$ns" apply -f -; }

# Issuer keys: one secret entry per file, mounted read-only as <key_dir>/issuer/<kid>.pk8.
apply create secret generic firstkey-issuer-keys --from-file="$key_dir/issuer/"
# The key-encryption key of responder notes, read as FIRSTKEY_DATA_KEY.
apply create secret generic firstkey-data-key --from-literal=data-key="$(tr -d '[:space:]' < "$key_dir/data.kek")"
# The agent channel's certificate (kubernetes.io/tls: tls.crt, tls.key).
apply create secret tls firstkey-agent-tls --cert="$cert" --key="$key"
echo "secrets firstkey-issuer-keys, firstkey-data-key, firstkey-agent-tls applied in $ns"
