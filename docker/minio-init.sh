#!/bin/sh
# One-shot MinIO setup for the compose stack (runs in the minio/mc image, as `minio-init`):
# the bucket, the least-privilege policy from infra/policies/ and the pipeline's own user.
# The pipeline services then use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never the root
# credentials. Idempotent: safe to run again on an existing volume.
set -eu

: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${AWS_ACCESS_KEY_ID:?AWS_ACCESS_KEY_ID is not set}"
: "${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY is not set}"
: "${TOKENMILL_S3_ENDPOINT:?TOKENMILL_S3_ENDPOINT is not set}"
# The bucket of TOKENMILL_DATA_ROOT (s3://tokenmill) and of the policy file.
BUCKET=tokenmill
POLICY_NAME=tokenmill-pipeline
POLICY_FILE=/policies/minio-pipeline.json

mc alias set tokenmill "$TOKENMILL_S3_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "tokenmill/$BUCKET"
mc admin policy create tokenmill "$POLICY_NAME" "$POLICY_FILE"
mc admin user add tokenmill "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
if mc admin user info tokenmill "$AWS_ACCESS_KEY_ID" | grep -q "$POLICY_NAME"; then
    echo "policy $POLICY_NAME already attached to the pipeline user"
else
    mc admin policy attach tokenmill "$POLICY_NAME" --user "$AWS_ACCESS_KEY_ID"
fi
echo "minio-init: bucket $BUCKET ready, user $AWS_ACCESS_KEY_ID has policy $POLICY_NAME"
