"""Let existing SDKs run through the broker unchanged but for their transport.

- `httpx_transport.BrokerTransport` / `AsyncBrokerTransport` (extra `[httpx]`)
- `requests_adapter.BrokerAdapter` (extra `[requests]`), for requests sessions
  like dwave-cloud-client's and qiskit-ibm-runtime's
- `botocore_signer.use_broker` (extra `[aws]`), for boto3 / Braket clients

Each sends requests for one provider with one TokenProvider (plus this
process's LUNA_* variables); the daemon adds the credential.
"""
