"""D-Wave Leap SAPI: the token itself in X-Auth-Token."""

from types import MappingProxyType

from qpu_broker.providers.base import HeaderScheme


class DWave(HeaderScheme):
    provider = "dwave"
    hosts = ("cloud.dwavesys.com", "na-west-1.cloud.dwavesys.com", "eu-central-1.cloud.dwavesys.com",
             "na-east-1.cloud.dwavesys.com")
    header = "X-Auth-Token"
    # dwave-cloud-client 0.14 (config/loaders.py): DWAVE_API_ENDPOINT, whose default is
    # https://cloud.dwavesys.com/sapi/ (config/constants.py), and DWAVE_API_TOKEN; the environment
    # wins over dwave.conf files, and an endpoint makes it skip the Metadata API.
    session_env = MappingProxyType({"DWAVE_API_ENDPOINT": "{url}/sapi/", "DWAVE_API_TOKEN": "{credential}"})
    # Hybrid and nonlinear solvers answer `binary-ref`: an absolute SAPI URL the client GETs
    # with its token (dwave-cloud-client 0.14, client/base.py _download_answer_worker).
    session_rewrites_urls = True
