#!/bin/sh
# Temporal's SQL schemas, run by the one-shot `temporal-schema` service (temporalio/admin-tools)
# before the server starts. Temporal's own compose examples do the same with the same tool
# (temporalio/samples-server, compose/scripts/setup-postgres.sh); the difference is that the
# databases already exist (deploy/postgres-init/10-roles.sh creates them owned by the
# `temporal` role), so this never needs a superuser and is safe to run on every `up`:
#   - `setup-schema -v 0.0` only creates the version tables; on a database already past 0.0 it
#     changes nothing (tools/common/schema/setuptask.go: "Skip version upgrade");
#   - `update-schema` applies only the versions above the recorded one, so a newer
#     admin-tools image migrates the schema before the newer server starts.
# The password comes from SQL_PASSWORD (temporal-sql-tool reads it from the environment), so
# it never appears in the process list.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
port="${DB_PORT:-5432}"
schemas=/etc/temporal/schema/postgresql/v12

attempt=1
until nc -z -w 5 "$POSTGRES_SEEDS" "$port"; do
    if [ "$attempt" -ge 30 ]; then
        echo "PostgreSQL at $POSTGRES_SEEDS:$port did not answer" >&2
        exit 1
    fi
    attempt=$((attempt + 1))
    sleep 2
done

sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$port" -u "$POSTGRES_USER" "$@"
}

sql_tool --db "${DBNAME:-temporal}" setup-schema -v 0.0
sql_tool --db "${DBNAME:-temporal}" update-schema -d "$schemas/temporal/versioned"
sql_tool --db "${VISIBILITY_DBNAME:-temporal_visibility}" setup-schema -v 0.0
sql_tool --db "${VISIBILITY_DBNAME:-temporal_visibility}" update-schema -d "$schemas/visibility/versioned"
echo "Temporal schemas are up to date"
