"""Fujitsu Digital Annealer: the key in X-Api-Key."""

from .base import HeaderScheme


class Fujitsu(HeaderScheme):
    provider = "fujitsu"
    hosts = ("api.aispf.global.fujitsu.com",)
    header = "X-Api-Key"
