"""IonQ: `Authorization: apiKey KEY`."""

from .base import HeaderScheme


class IonQ(HeaderScheme):
    provider = "ionq"
    hosts = ("api.ionq.co",)
    header = "Authorization"
    prefix = "apiKey "
