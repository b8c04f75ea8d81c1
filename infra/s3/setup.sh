#!/usr/bin/env bash
# Create the metaray bucket layout on S3 (or an S3-compatible store) and check access.
#   METARAY_BUCKET=metaray-data infra/s3/setup.sh
#   AWS_ENDPOINT_URL=http://127.0.0.1:9000 METARAY_BUCKET=metaray-data infra/s3/setup.sh   # MinIO/moto
# Credentials come from the standard AWS chain (env, profile, instance role); none are read here.
# Layout:  shards/<name>/   runs/<run_name>/   bank/<name>/   mlflow/   (see infra/README.md)
set -euo pipefail
bucket="${METARAY_BUCKET:?set METARAY_BUCKET to the bucket name}"
py="${PYTHON:-python}"
"$py" - "$bucket" <<'PY'
import os, sys
import boto3
from botocore.exceptions import ClientError

bucket = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
try:
    s3.head_bucket(Bucket=bucket)
    print(f"bucket {bucket} exists")
except ClientError as exc:
    code = exc.response.get("Error", {}).get("Code", "")
    if code not in ("404", "NoSuchBucket"):
        sys.exit(f"bucket {bucket}: {code or exc}; check the credentials and the bucket's policy "
                 "(infra/s3/iam-policy.json lists what metaray needs)")
    region = s3.meta.region_name
    kwargs = {} if region in (None, "us-east-1") else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **kwargs)
    print(f"created bucket {bucket}")
probe = "metaray-access-check"
s3.put_object(Bucket=bucket, Key=probe, Body=b"ok")
s3.delete_object(Bucket=bucket, Key=probe)
print(f"read/write access to s3://{bucket} confirmed")
PY
