"""What an exec session reads from S3 for amazon-braket-sdk (in-process: the judge and the grant)."""

from __future__ import annotations

import json

import pytest
from qpu_broker.common.reach import Owner, Reach
from qpu_broker.common.url import parse_url
from qpu_broker.forward.forwarder import ForwardCall, _granted
from qpu_broker.forward.session_results import (
    MAX_DIRECTORIES,
    S3Read,
    is_task_lookup,
    judge,
    learn,
)
from qpu_broker_client import PermissionDeniedError

TASK = "tasks/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


def _learned(*answers: dict) -> dict:
    directories: dict = {}
    for answer in answers:
        learn(directories, json.dumps(answer).encode())
    return directories


def test_only_keys_under_a_directory_braket_named_are_read_and_only_by_getobject_or_headobject():
    dirs = _learned({"outputS3Bucket": "amazon-braket-results", "outputS3Directory": TASK})
    assert judge(dirs, "GET", f"/amazon-braket-results/{TASK}/results.json", "us-east-1") == S3Read(
        "amazon-braket-results.s3.us-east-1.amazonaws.com", f"/{TASK}/results.json")
    assert judge(dirs, "HEAD", f"/amazon-braket-results/{TASK}/results.json", "eu-north-1").host.endswith(
        ".s3.eu-north-1.amazonaws.com")
    for method, path in (("GET", f"/amazon-braket-results/{TASK}"),  # the directory itself
                         ("GET", f"/amazon-braket-results/{TASK}x/results.json"),  # a sibling sharing its prefix
                         ("GET", f"/amazon-braket-results/{TASK}/../other/results.json"),
                         ("GET", f"/amazon-braket-results/{TASK}/%2e%2e/x"),
                         ("GET", f"/amazon-braket-results/{TASK}//x"),
                         ("GET", f"/other-bucket/{TASK}/results.json"),
                         ("GET", f"/amazon-braket-results/{TASK}/results.json?acl"),
                         ("GET", "/amazon-braket-results?list-type=2&prefix=tasks/"),
                         ("PUT", f"/amazon-braket-results/{TASK}/results.json"),
                         ("DELETE", f"/amazon-braket-results/{TASK}/results.json")):
        with pytest.raises(PermissionDeniedError) as refused:
            judge(dirs, method, path, "us-east-1")
        assert "outside `qpu-broker exec`" in str(refused.value) and "\n" not in str(refused.value)


def test_a_dotted_bucket_is_read_path_style_and_odd_answers_teach_nothing():
    dirs = _learned({"outputS3Bucket": "my.results", "outputS3Directory": TASK},
                    {"outputS3Bucket": "UPPER", "outputS3Directory": TASK},  # no bucket name
                    {"outputS3Bucket": "b-ok", "outputS3Directory": "a/../b"},  # not a plain key
                    {"outputS3Bucket": "b-ok"}, ["not", "a", "task"])
    assert list(dirs) == [("my.results", TASK)]
    assert judge(dirs, "GET", f"/my.results/{TASK}/results.json", "us-east-1") == S3Read(
        "s3.us-east-1.amazonaws.com", f"/my.results/{TASK}/results.json")
    learn(dirs, b"{not json")
    assert len(dirs) == 1


def test_a_session_keeps_the_newest_directories_within_its_bound():
    dirs = _learned(*({"outputS3Bucket": "bkt", "outputS3Directory": f"t/{i}"} for i in range(MAX_DIRECTORIES + 5)))
    assert len(dirs) == MAX_DIRECTORIES and ("bkt", "t/0") not in dirs and ("bkt", f"t/{MAX_DIRECTORIES + 4}") in dirs


def test_task_lookups_are_get_quantum_task_only():
    assert is_task_lookup("GET", "/quantum-task/arn%3Aaws%3Abraket%3Aus-east-1%3A1%3Aquantum-task%2Fx?additionalAttributeNames=QueueInfo")
    assert not is_task_lookup("POST", "/quantum-task")
    assert not is_task_lookup("GET", "/quantum-task/")
    assert not is_task_lookup("GET", "/device/arn")


def test_the_forwarder_takes_a_sessions_grant_for_its_own_credential_only():
    host = "amazon-braket-results.s3.us-east-1.amazonaws.com"
    url = parse_url(f"https://{host}/{TASK}/results.json", "the URL")
    call = ForwardCall("aws", "GET", url.for_aiohttp(), [], {}, session=True, granted_host=host)
    assert _granted(call, url, Reach())
    assert not _granted(call, url, Reach(owner=Owner.ORG))  # an org token goes where the org allows
    assert not _granted(ForwardCall("aws", "GET", "", [], {}, granted_host=host), url, Reach())  # not a session's
    for other in (f"https://evil.example.com/{TASK}", f"https://{host}:8443/x", f"http://{host}/x"):
        assert not _granted(call, parse_url(other, "the URL"), Reach())
