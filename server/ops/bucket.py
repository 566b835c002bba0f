"""The media bucket's safety settings, applied by `python -m server bucket` (compose's one-shot `bucket`
service, the Kubernetes setup Job, or once by hand against AWS S3):

* lifecycle: incomplete multipart uploads are aborted after a day (an abandoned upload otherwise
  stays billed forever); objects tagged napalm-deleted=true expire after a day (a backstop for media
  an account deletion could not remove at once);
* default server-side encryption (SSE_S3 / aws:kms from S3_SSE, AES256 when unset);
* public access blocked: media is served through presigned URLs or the CDN origin only.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

DELETED_TAG = ("napalm-deleted", "true")

LIFECYCLE: dict[str, Any] = {"Rules": [
    {"ID": "abort-incomplete-multipart-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
     "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    {"ID": "expire-media-of-deleted-accounts", "Status": "Enabled",
     "Filter": {"Tag": {"Key": DELETED_TAG[0], "Value": DELETED_TAG[1]}}, "Expiration": {"Days": 1}},
]}

PUBLIC_ACCESS_BLOCK = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                       "RestrictPublicBuckets": True}


def encryption(sse: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"SSEAlgorithm": sse or "AES256"}
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": rule, "BucketKeyEnabled": sse == "aws:kms"}]}


def configure(s3: Any, bucket: str, sse: str) -> list[str]:
    """Create the bucket if missing and apply the settings above. Returns one line per step; a store
    that does not implement a step (some S3-compatible servers) is reported, not fatal."""
    done = []
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
        done.append(f"created bucket {bucket}")
    steps = [
        ("lifecycle rules", lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=bucket, LifecycleConfiguration=LIFECYCLE)),
        ("default encryption", lambda: s3.put_bucket_encryption(
            Bucket=bucket, ServerSideEncryptionConfiguration=encryption(sse))),
        ("public access block", lambda: s3.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK)),
    ]
    for name, apply in steps:
        try:
            apply()
            done.append(f"{name}: applied")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("NotImplemented", "XNotImplemented"):
                raise
            done.append(f"{name}: not supported by this store ({code})")
    return done
