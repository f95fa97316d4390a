"""IonQ: `Authorization: apiKey KEY`."""

from types import MappingProxyType

from qpu_broker.providers.base import HeaderScheme


class IonQ(HeaderScheme):
    provider = "ionq"
    hosts = ("api.ionq.co",)
    header = "Authorization"
    prefix = "apiKey "
    # qiskit-ionq (helpers.py): QISKIT_IONQ_API_TOKEN / IONQ_API_KEY, and QISKIT_IONQ_API_URL /
    # IONQ_API_URL (default https://api.ionq.co/v0.4), the QISKIT_ ones first; cirq-ionq
    # (service.py): CIRQ_IONQ_API_KEY and CIRQ_IONQ_REMOTE_HOST (it puts /v0.4 after the host).
    session_env = MappingProxyType({
        "QISKIT_IONQ_API_TOKEN": "{credential}", "IONQ_API_KEY": "{credential}", "CIRQ_IONQ_API_KEY": "{credential}",
        "QISKIT_IONQ_API_URL": "{url}/v0.4", "IONQ_API_URL": "{url}/v0.4", "CIRQ_IONQ_REMOTE_HOST": "{url}",
    })
