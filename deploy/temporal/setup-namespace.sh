#!/bin/sh
# Durapay's namespace and search attributes, run by the one-shot `temporal-setup` service
# (temporalio/admin-tools) once the server is healthy. temporalio/server, unlike the retired
# auto-setup image, creates no namespace; Temporal's compose examples run the same CLI calls
# (temporalio/samples-server, compose/scripts/create-namespace.sh). Safe on every `up`: what
# exists is left alone, and anything else that fails stops the stack from starting.
#   TEMPORAL_ADDRESS    the frontend, e.g. temporal:7233
#   NAMESPACE           default: default (Durapay's DURAPAY_TEMPORAL_NAMESPACE)
#   RETENTION           how long closed runs are kept, default 30d
#   SEARCH_ATTRIBUTES   Name=Type pairs, the ones of core/search_attributes.py
set -eu
: "${TEMPORAL_ADDRESS:?}" "${SEARCH_ATTRIBUTES:?}"
namespace="${NAMESPACE:-default}"
export TEMPORAL_ADDRESS

attempt=1
until temporal operator cluster health >/dev/null 2>&1; do
    if [ "$attempt" -ge 60 ]; then
        echo "Temporal at $TEMPORAL_ADDRESS did not become healthy" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 2
done

if temporal operator namespace describe --namespace "$namespace" >/dev/null 2>&1; then
    echo "namespace $namespace exists"
else
    temporal operator namespace create --namespace "$namespace" --retention "${RETENTION:-30d}"
    echo "namespace $namespace created"
fi

# A freshly created namespace can take a moment to reach every frontend's cache.
existing=""
attempt=1
until existing=$(temporal operator search-attribute list --namespace "$namespace" 2>/dev/null); do
    if [ "$attempt" -ge 30 ]; then
        echo "cannot list the search attributes of $namespace" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 2
done

for pair in $SEARCH_ATTRIBUTES; do
    name="${pair%%=*}"
    type="${pair#*=}"
    if printf '%s\n' "$existing" | grep -qw -- "$name"; then
        echo "search attribute $name exists"
    else
        temporal operator search-attribute create --namespace "$namespace" \
            --name "$name" --type "$type"
        echo "search attribute $name ($type) created"
    fi
done
