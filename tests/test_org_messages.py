"""The org records on the wire: usage records and quotas are plain types, converted once each
way (qpu_broker_client/org_messages.py) into the same bytes as before, and a usage queue an
older daemon left drains into the same report. In-process: no daemon, no server."""

from __future__ import annotations

import dataclasses
import sqlite3

from qpu_broker.tokens.usage_queue import MIGRATIONS, UsageQueue
from qpu_broker_client.org_messages import (
    quota_from_proto,
    quota_to_proto,
    usage_from_proto,
    usage_report,
    usage_to_proto,
)
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2
from qpu_broker_client.usage import UNCOUNTED, Quota, UsageRecord

RECORD = UsageRecord("r-1", "bob", "t1", "Org D-Wave", "dwave", "forward", "POST", "na-west-1.cloud.dwavesys.com",
                     "/sapi/v2/problems", 200, "answered", 13, -1, 1_700_000_000_123_456, 7, 1500, "res-9", 1200)
QUOTA = Quota(3, "*", "t1", "Org D-Wave", "qpu-us", 5_000_000, 86400_000_000, 1_700_000_000_000_000, 0,
              1_700_086_400_000_000, 1_700_000_000_000_000, 1_800_000_000_000_000)
# What qpu_broker_client/usage.py's usage_to_proto and quota_to_proto made of these before the
# records became plain types (at 4a2a32d): the wire contract, byte for byte.
RECORD_BYTES = ("0a03722d311203626f621a027431220a4f726720442d576176652a0564776176653207666f72776172643a04504f5354421c"
                "6e612d776573742d312e636c6f75642e64776176657379732e636f6d4a112f736170692f76322f70726f626c656d7350c801"
                "5a08616e737765726564600d68ffffffffffffffffff01720b0880e2cfaa06108094ef3a78078001dc0b8a01057265732d39"
                "9001b009")
QUOTA_BYTES = ("080312012a1a027431220a4f726720442d576176652a067170752d757330c096b1023880a30542060880e2cfaa065206088085d5aa"
               "065a060880e2cfaa0662060880a4a7da06")


def test_records_and_quotas_encode_as_they_did_and_come_back_equal():
    assert usage_to_proto(RECORD).SerializeToString().hex() == RECORD_BYTES
    assert usage_from_proto(org_pb2.UsageRecord.FromString(bytes.fromhex(RECORD_BYTES))) == RECORD
    assert quota_to_proto(QUOTA).SerializeToString().hex() == QUOTA_BYTES
    assert quota_from_proto(org_pb2.Quota.FromString(bytes.fromhex(QUOTA_BYTES))) == QUOTA
    # A view with no one count (UNCOUNTED) goes out as 0 used, as before.
    assert quota_to_proto(dataclasses.replace(QUOTA, used=UNCOUNTED)).SerializeToString().hex() == QUOTA_BYTES


def test_a_queue_an_older_daemon_left_drains_into_the_same_report(tmp_path):
    """A queue at schema 1 (before QPU time and reservations), with a finished record waiting,
    opens, migrates and reports that record as an older daemon would have."""
    path = tmp_path / "org-usage.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO queued (id, server, member, finished, token_id, token_name, provider, kind, method, host, "
               "path, status, outcome, request_bytes, answer_bytes, at_us) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, "
               "?, ?, ?, ?)", ("old-1", "org.example:7443", "bob", "t1", "Org IonQ", "ionq", "forward", "POST",
                               "api.ionq.co", "/v0.3/jobs", 200, "answered", 13, 512, 1_700_000_000_000_000))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    queue = UsageQueue(path)
    login = ("org.example:7443", "bob")
    batch = queue.to_send(login, 100)
    expected = org_pb2.ReportUsageRequest(records=[org_pb2.UsageRecord(
        id="old-1", token_id="t1", token_name="Org IonQ", provider="ionq", kind="forward", method="POST",
        host="api.ionq.co", path="/v0.3/jobs", status=200, outcome="answered", request_bytes=13, answer_bytes=512)])
    expected.records[0].at.FromMicroseconds(1_700_000_000_000_000)
    assert usage_report(batch).SerializeToString() == expected.SerializeToString()
    queue.sent([r.id for r in batch])
    assert queue.waiting("org.example:7443") == 0 and queue.to_send(login, 100) == []
    queue.close()
