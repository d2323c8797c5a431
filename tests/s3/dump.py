#!/usr/bin/env python3
"""Lists a bucket through boto3 (an S3 client independent of ours) and
prints one JSON object per stored object: its key, size, content headers
and the auditIDs of its JSON lines, decompressed when gzip'd.

usage: dump.py ENDPOINT BUCKET [PREFIX]   (loopback test stores only)
"""
import gzip
import json
import sys

import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
prefix = sys.argv[3] if len(sys.argv) > 3 else ""
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="test",
    aws_secret_access_key="test",
    region_name="us-east-1",
)
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
for page in pages:
    for o in page.get("Contents", []):
        r = s3.get_object(Bucket=bucket, Key=o["Key"])
        body = r["Body"].read()
        enc = r.get("ContentEncoding", "")
        if enc == "gzip" or body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        ids = []
        for line in body.decode("utf-8").splitlines():
            ids.append(json.loads(line).get("auditID", ""))
        print(json.dumps({
            "key": o["Key"],
            "size": o["Size"],
            "content_type": r.get("ContentType", ""),
            "content_encoding": enc,
            "ids": ids,
        }))
