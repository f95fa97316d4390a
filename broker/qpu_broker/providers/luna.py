"""Luna: `Luna-API-Key`; QPU tokens for the run travel in the JSON body's `qpu_tokens`."""

from qpu_broker.providers.base import HeaderScheme


class Luna(HeaderScheme):
    provider = "luna"
    hosts = ("api.aqarios.com",)
    header = "Luna-API-Key"
