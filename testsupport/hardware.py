"""A daemon wired to loopback fakes of every provider, through config only."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from qpu_broker.providers.dwave import DWave
from qpu_broker.providers.ibm import Ibm
from qpu_broker_client.providers import PROVIDERS

from testsupport.fakes import (
    AwsFake,
    FakeServer,
    IbmFake,
    LunaFake,
    QCtrlFake,
    Reply,
    TestCA,
    header_check,
    make_ca,
)
from testsupport.fujitsu_quantum_fake import FujitsuQuantumCloud
from testsupport.sdk_fakes import RESULTS_BUCKET

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
IBM_HOSTS = (*Ibm.hosts, "us-east.quantum.cloud.ibm.com")  # the official ones, and a regional one


@dataclasses.dataclass
class Hardware:
    ca: TestCA
    servers: dict[str, FakeServer]
    secrets: dict[str, str]
    ibm: IbmFake
    qctrl: QCtrlFake
    aws: AwsFake
    fqc: FujitsuQuantumCloud  # Cognito, and any call with an access token it issued, on one server
    catcher: FakeServer  # configured for no provider: must never receive anything
    plain: FakeServer  # plain http, allowed for dwave only
    luna_expect: dict

    def url(self, provider: str, path: str | None = None) -> str:
        """A URL on the provider's fake: by default a jobs path of its API (IBM's under /api/)."""
        default = "/api/v1/jobs" if provider == "ibm" else "/v1/jobs"
        return self.servers[provider].url(default if path is None else path)

    def close(self) -> None:
        for s in [*self.servers.values(), self.catcher, self.plain]:
            s.close()


def start_hardware(directory: pathlib.Path, canary: str) -> Hardware:
    ca = make_ca(directory / "ca")
    secrets = {p: f"{canary}-{p}" for p in PROVIDERS if p != "aws"}
    secrets["aws"] = f"{AWS_KEY_ID}:{canary}-aws-secret"
    secrets["fujitsu_quantum"] = json.dumps({"client_id": "fqc-test-client", "username": "alice",
                                             "refresh_token": f"{canary}-fujitsu_quantum"})
    hw: dict = {}
    ibm = IbmFake(lambda: secrets["ibm"])
    qctrl = QCtrlFake(lambda: secrets["qctrl"])
    aws = AwsFake(lambda: (secrets["aws"].split(":")[0], secrets["aws"].split(":")[1], None),
                  lambda: hw["servers"]["aws"].url(""))
    luna_expect: dict = {}
    fqc = FujitsuQuantumCloud(lambda: json.loads(secrets["fujitsu_quantum"]))
    servers = {
        "ibm": FakeServer(ibm, ca),
        "qctrl": FakeServer(qctrl, ca),
        "aws": FakeServer(aws, ca),
        "dwave": FakeServer(header_check("X-Auth-Token", lambda: secrets["dwave"]), ca),
        "fujitsu": FakeServer(header_check("X-Api-Key", lambda: secrets["fujitsu"]), ca),
        "ionq": FakeServer(header_check("Authorization", lambda: "apiKey " + secrets["ionq"]), ca),
        "luna": FakeServer(LunaFake(lambda: secrets["luna"], lambda: luna_expect), ca),
        "fujitsu_quantum": FakeServer(fqc.any_call, ca),
    }
    hw["servers"] = servers
    catcher = FakeServer(lambda seen: Reply(200, b"caught"), ca)
    plain = FakeServer(header_check("X-Auth-Token", lambda: secrets["dwave"]))
    return Hardware(ca, servers, secrets, ibm, qctrl, aws, fqc, catcher, plain, luna_expect)


def write_config(home: pathlib.Path, hw: Hardware, extra: str = "",
                 dwave_hosts: dict[str, FakeServer] | None = None) -> None:
    """`dwave_hosts`: official D-Wave hosts reached at fakes of their own (else at the D-Wave fake)."""
    lines = []
    regional = {h: (dwave_hosts or {}).get(h, hw.servers["dwave"]) for h in DWave.hosts}
    for provider, server in hw.servers.items():
        lines.append(f"[providers.{provider}]")
        netlocs = sorted({server.netloc, *(s.netloc for s in regional.values())}) if provider == "dwave" else [server.netloc]
        lines.append(f"hosts = {json.dumps(netlocs)}")
        lines.append(f"ca_file = {json.dumps(str(hw.ca.ca_file))}")
        lines.append(f"endpoint = {json.dumps('https://' + server.netloc)}")  # where exec sessions send
        if provider == "dwave":
            lines.append(f"plain_http_hosts = {json.dumps([hw.plain.netloc])}")
            # SDKs under a session reach D-Wave's regional hosts (from the Metadata API) at the one fake.
            lines.append("[providers.dwave.endpoints]")
            lines += [f"{json.dumps(host)} = {json.dumps('https://' + s.netloc)}" for host, s in regional.items()]
        if provider == "ibm":
            lines.append(f"token_url = {json.dumps(server.url('/identity/token'))}")
            # Proxy sessions reach each official IBM host the SDK names at the one fake.
            lines.append("[providers.ibm.endpoints]")
            lines += [f"{json.dumps(host)} = {json.dumps('https://' + server.netloc)}" for host in IBM_HOSTS]
        if provider == "aws":
            # The S3 host of the results bucket, reached at the same fake (it tells S3 by the signature).
            lines.append("[providers.aws.endpoints]")
            lines.append(f"{json.dumps(f'{RESULTS_BUCKET}.s3.us-east-1.amazonaws.com')} = {json.dumps('https://' + server.netloc)}")
        if provider in ("qctrl", "fujitsu_quantum"):
            # The API's root, as qctrl-client; Cognito's, as botocore posts InitiateAuth (at the one fake).
            lines.append(f"token_url = {json.dumps(server.url('/'))}")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / "config.toml").write_text("\n".join(lines) + "\n" + extra)
