"""D-Wave Leap SAPI: the token itself in X-Auth-Token."""

from types import MappingProxyType

from qpu_broker.providers.base import HeaderScheme


class DWave(HeaderScheme):
    provider = "dwave"
    hosts = ("cloud.dwavesys.com", "na-west-1.cloud.dwavesys.com", "eu-central-1.cloud.dwavesys.com",
             "na-east-1.cloud.dwavesys.com")
    header = "X-Auth-Token"
    # dwave-cloud-client: DWAVE_API_ENDPOINT (SAPI's base URL) and DWAVE_API_TOKEN.
    session_env = MappingProxyType({"DWAVE_API_ENDPOINT": "{url}/sapi/v2/", "DWAVE_API_TOKEN": "{credential}"})
