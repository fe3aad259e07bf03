#!/bin/sh
# One-shot MinIO setup for the compose stack (runs in the minio/mc image, as `minio-init`):
# the bucket, the least-privilege policies from infra/policies/ and one user per identity:
# the pipeline user (corpus services) and the training user (training worker and its jobs).
# The services then use their own keys, never the root credentials. Idempotent: safe to run
# again on an existing volume (a policy file changed since is loaded again).
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${AWS_ACCESS_KEY_ID:?AWS_ACCESS_KEY_ID is not set}"
: "${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY is not set}"
: "${TRAINING_ACCESS_KEY_ID:?TRAINING_ACCESS_KEY_ID is not set}"
: "${TRAINING_SECRET_ACCESS_KEY:?TRAINING_SECRET_ACCESS_KEY is not set}"
: "${TOKENMILL_S3_ENDPOINT:?TOKENMILL_S3_ENDPOINT is not set}"
# The bucket of TOKENMILL_DATA_ROOT (s3://tokenmill) and of the policy files.
BUCKET=tokenmill
POLICY_FILE=/policies/minio-pipeline.json
TRAINING_POLICY_FILE=/policies/minio-training.json

# user_with_policy USER SECRET POLICY_NAME POLICY_FILE: the user exists with exactly this policy.
user_with_policy() {
    mc admin policy create tokenmill "$3" "$4"
    mc admin user add tokenmill "$1" "$2"
    if mc admin user info tokenmill "$1" | grep -q -w -- "$3"; then
        echo "policy $3 already attached to user $1"
    else
        mc admin policy attach tokenmill "$3" --user "$1"
    fi
}

mc alias set tokenmill "$TOKENMILL_S3_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "tokenmill/$BUCKET"
user_with_policy "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" tokenmill-pipeline "$POLICY_FILE"
user_with_policy "$TRAINING_ACCESS_KEY_ID" "$TRAINING_SECRET_ACCESS_KEY" tokenmill-training "$TRAINING_POLICY_FILE"
echo "minio-init: bucket $BUCKET ready; users $AWS_ACCESS_KEY_ID (tokenmill-pipeline), $TRAINING_ACCESS_KEY_ID (tokenmill-training)"
