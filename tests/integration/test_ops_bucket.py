"""`python -m server bucket`: the media bucket gets its lifecycle rules, default encryption and a public
access block (against the test session's S3 server), and running it again changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from server.ops.bucket import DELETED_TAG


def run_bucket(stack, bucket):
    env = {**os.environ, **stack.env(), "S3_BUCKET": bucket, "LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "server", "bucket"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_bucket_gets_lifecycle_encryption_and_public_access_block(stack, s3):
    bucket = f"napalm-ops-{uuid.uuid4().hex[:8]}"
    done = run_bucket(stack, bucket)
    assert done.returncode == 0, done.stderr
    assert f"created bucket {bucket}" in done.stdout
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    deleted = rules["expire-media-of-deleted-accounts"]
    assert deleted["Filter"]["Tag"] == {"Key": DELETED_TAG[0], "Value": DELETED_TAG[1]}
    assert deleted["Expiration"]["Days"] == 1
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block[k] for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"))

    again = run_bucket(stack, bucket)
    assert again.returncode == 0 and "created bucket" not in again.stdout
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == 2
