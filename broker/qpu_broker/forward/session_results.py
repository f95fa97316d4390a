"""Braket task results in S3, read through an exec session.

amazon-braket-sdk's `AwsQuantumTask.result()` looks the task up (GetQuantumTask), then reads
`outputS3Directory/results.json` from `outputS3Bucket` with boto3's S3 client, which under
`exec` comes to the session (AWS_ENDPOINT_URL_S3) path-style, as botocore addresses an IP
endpoint: `GET /BUCKET/KEY`. A session signs for Braket's API, and S3 is another service where
the same key may read every bucket the account can; so a session reads from S3 only what
Braket itself said a task wrote: the bucket and directory of a GetQuantumTask answer the
session relayed. That is AWS's answer, not the command's request: CreateQuantumTask names any
bucket and prefix the command likes, but the directory Braket answers ends in the task's own
new id. Only GetObject and HeadObject of a key under such a directory, with no query (a query
is another operation: ?acl, ?tagging, ?uploads, ?list-type), and keys in plain characters, so
that the path signed here is the path S3 signs.
"""

from __future__ import annotations

import dataclasses
import json
import re

from qpu_broker_client.errors import PermissionDeniedError

BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket name rules
_PLAIN = re.compile(r"[A-Za-z0-9._-]+")  # a key segment that needs no percent-encoding
# GetQuantumTask: the task's ARN is the rest of the path; amazon-braket-sdk asks for QueueInfo in the query.
TASK_LOOKUP = re.compile(r"/quantum-task/[^?]+(?:\?.*)?")
MAX_DIRECTORIES = 256  # per session endpoint: the oldest learned goes first
WHAT_TO_DO = "read other S3 objects outside `qpu-broker exec`, with credentials meant for S3"


@dataclasses.dataclass(frozen=True)
class S3Read:
    host: str  # the official S3 host it goes to
    path: str  # its path there


def is_task_lookup(method: str, raw_path: str) -> bool:
    return method == "GET" and TASK_LOOKUP.fullmatch(raw_path) is not None


def learn(directories: dict[tuple[str, str], None], answer: bytes) -> None:
    """Keep the results directory a GetQuantumTask answer names (a bucket, a key prefix)."""
    try:
        doc = json.loads(answer)
    except (ValueError, RecursionError):
        return
    if not isinstance(doc, dict):
        return
    bucket, directory = doc.get("outputS3Bucket"), doc.get("outputS3Directory")
    if not (isinstance(bucket, str) and isinstance(directory, str) and BUCKET.fullmatch(bucket)
            and _plain_key(directory)):
        return
    directories.pop((bucket, directory), None)
    directories[(bucket, directory)] = None
    while len(directories) > MAX_DIRECTORIES:
        directories.pop(next(iter(directories)))


def judge(directories: dict[tuple[str, str], None], method: str, raw_path: str, region: str) -> S3Read:
    """Where a session's S3 request goes, or PermissionDeniedError saying why not and what to do."""
    path, _, query = raw_path.partition("?")
    if method not in ("GET", "HEAD") or query:
        raise PermissionDeniedError(
            f"a session reads Braket task results from S3 (GetObject) and makes no other S3 call ({method} "
            f"{path[:80]}{'?' + query[:40] if query else ''}): {WHAT_TO_DO}")
    bucket, _, key = path[1:].partition("/")
    if not (BUCKET.fullmatch(bucket) and _plain_key(key)) or not any(
            b == bucket and key.startswith(d + "/") for b, d in directories):
        raise PermissionDeniedError(
            f"s3://{path[1:][:120]} is not in the results directory of a Braket task this session has looked "
            f"up (it reads only those, once GetQuantumTask has named them): {WHAT_TO_DO}")
    # Virtual-hosted, as AWS asks; a bucket with dots would not match S3's certificate that way.
    if "." in bucket:
        return S3Read(f"s3.{region}.amazonaws.com", path)
    return S3Read(f"{bucket}.s3.{region}.amazonaws.com", "/" + key)


def _plain_key(key: str) -> bool:
    """Segments of plain characters, none empty or of dots: signed and sent exactly as written."""
    return all(_PLAIN.fullmatch(s) and s.strip(".") for s in key.split("/"))
