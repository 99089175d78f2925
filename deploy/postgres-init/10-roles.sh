#!/bin/sh
# Runs once, when the compose Postgres starts on an empty data volume (the postgres image runs
# /docker-entrypoint-initdb.d/*.sh as the superuser, against a server listening on its socket
# only). One role per tenant, each owning its own databases:
#   temporal -> temporal, temporal_visibility (Temporal's schemas; see deploy/temporal/setup-schema.sh)
#   durapay  -> durapay (Durapay's tables; `durapay migrate`)
# Passwords come from the environment (.env); nothing here has a default. They are stored as
# SCRAM-SHA-256 verifiers (the image's default password_encryption, and its pg_hba method for
# TCP connections, since PostgreSQL 14).
# No `set -u`: the image sources this file instead of executing it if the executable bit is lost,
# and its own entrypoint must not inherit nounset.
set -e
: "${POSTGRES_TEMPORAL_PASSWORD:?set POSTGRES_TEMPORAL_PASSWORD}"
: "${POSTGRES_DURAPAY_PASSWORD:?set POSTGRES_DURAPAY_PASSWORD}"

# psql substitutes :'name' as a quoted literal, so a password never needs escaping here, and the
# quoted heredoc keeps the shell from expanding anything in the SQL.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    --set=temporal_password="$POSTGRES_TEMPORAL_PASSWORD" \
    --set=durapay_password="$POSTGRES_DURAPAY_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
-- REPLICATION: the event stream reads the event table's changes through a logical
-- replication slot (docs/audit-and-events.md); the role already owns the data.
CREATE ROLE durapay LOGIN REPLICATION PASSWORD :'durapay_password';
CREATE DATABASE durapay OWNER durapay;
-- Every role may connect to every database by default (PUBLIC); each tenant keeps to its own.
REVOKE CONNECT, TEMPORARY ON DATABASE temporal, temporal_visibility, durapay FROM PUBLIC;
-- Temporal's visibility schema (v1.2, advanced visibility) needs btree_gin. It is a trusted
-- extension its owner could create too; creating it here keeps that off the `temporal` role.
\connect temporal_visibility
CREATE EXTENSION IF NOT EXISTS btree_gin;
SQL
