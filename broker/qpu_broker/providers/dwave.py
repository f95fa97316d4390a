"""D-Wave Leap SAPI: the token itself in X-Auth-Token."""

from qpu_broker.providers.base import HeaderScheme


class DWave(HeaderScheme):
    provider = "dwave"
    hosts = ("cloud.dwavesys.com", "na-west-1.cloud.dwavesys.com", "eu-central-1.cloud.dwavesys.com",
             "na-east-1.cloud.dwavesys.com")
    header = "X-Auth-Token"
