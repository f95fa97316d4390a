"""Fujitsu Digital Annealer: the key in X-Api-Key."""

from qpu_broker.providers.base import HeaderScheme


class Fujitsu(HeaderScheme):
    provider = "fujitsu"
    hosts = ("api.aispf.global.fujitsu.com",)
    header = "X-Api-Key"
