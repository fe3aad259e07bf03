#!/bin/sh
# Refuses to let the compose stack start with the placeholders of .env.example or weak
# secrets: MinIO and Postgres store the first credentials they are started with in their
# volumes, so a stack started once with `change-me` keeps it. Runs as the one-shot
# `preflight` service that minio and postgres wait for; exits non-zero naming every problem.
set -eu

# The value of the variable named $1 (names below are constants of this script).
value_of() {
    eval "printf '%s' \"\${$1:-}\""
}

problems=""
complain() {
    problems="$problems
  $1"
}

for name in MINIO_ROOT_USER MINIO_ROOT_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
            TRAINING_ACCESS_KEY_ID TRAINING_SECRET_ACCESS_KEY POSTGRES_PASSWORD; do
    value=$(value_of "$name")
    case "$value" in
        "") complain "$name is not set" ;;
        *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*) complain "$name still holds the change-me placeholder of .env.example" ;;
    esac
done

# Secrets: at least 16 characters (MinIO itself refuses fewer than 8).
for name in MINIO_ROOT_PASSWORD AWS_SECRET_ACCESS_KEY TRAINING_SECRET_ACCESS_KEY POSTGRES_PASSWORD; do
    value=$(value_of "$name")
    if [ -n "$value" ] && [ "${#value}" -lt 16 ]; then
        complain "$name is shorter than 16 characters"
    fi
done

# Three identities, three users: the training user must not be the pipeline user or the admin.
if [ -n "${TRAINING_ACCESS_KEY_ID:-}" ] && [ "${TRAINING_ACCESS_KEY_ID:-}" = "${AWS_ACCESS_KEY_ID:-}" ]; then
    complain "TRAINING_ACCESS_KEY_ID equals AWS_ACCESS_KEY_ID: the training identity must be its own user"
fi
for name in AWS_ACCESS_KEY_ID TRAINING_ACCESS_KEY_ID; do
    if [ -n "$(value_of "$name")" ] && [ "$(value_of "$name")" = "${MINIO_ROOT_USER:-}" ]; then
        complain "$name equals MINIO_ROOT_USER: services must never use MinIO's administrator"
    fi
done

if [ -n "$problems" ]; then
    echo "preflight: refusing to start; fix docker/.env:$problems" >&2
    exit 1
fi
echo "preflight: credentials set"
