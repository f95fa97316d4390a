"""IonQ: `Authorization: apiKey KEY`."""

from qpu_broker.providers.base import HeaderScheme


class IonQ(HeaderScheme):
    provider = "ionq"
    hosts = ("api.ionq.co",)
    header = "Authorization"
    prefix = "apiKey "
