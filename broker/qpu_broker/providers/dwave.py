"""D-Wave Leap SAPI: the token itself in X-Auth-Token; the QPU time its answers report."""

import json
from types import MappingProxyType

from qpu_broker.providers.base import HeaderScheme

# Answers are read whole to find their QPU time only up to this size (a QPU answer's samples are
# base64 in the JSON: a few MiB at the most for today's QPUs); a larger one counts no time (logged).
QPU_ANSWER_MAX = 16 << 20
QPU_US_MAX = 60_000_000  # no problem's QPU access time comes near a minute


def qpu_access_us(raw: bytes) -> int:
    """The QPU access time a SAPI answer reports (µs): `answer.timing.qpu_access_time` of a problem
    (GET /problems/{id}/answer), or summed over a list of problems (POST /problems/, GET
    /problems/?id=...). 0 when there is none (a status, a hybrid solver's answer, not JSON)."""
    try:
        doc = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return 0
    total = 0.0
    for problem in doc if isinstance(doc, list) else [doc]:
        answer = problem.get("answer") if isinstance(problem, dict) else None
        timing = answer.get("timing") if isinstance(answer, dict) else None
        value = timing.get("qpu_access_time") if isinstance(timing, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < QPU_US_MAX:
            total += value  # (a value past any problem's run, NaN or infinite, is no answer's: none counted)
    return int(total)


class DWave(HeaderScheme):
    provider = "dwave"
    hosts = ("cloud.dwavesys.com", "na-west-1.cloud.dwavesys.com", "eu-central-1.cloud.dwavesys.com",
             "na-east-1.cloud.dwavesys.com")
    header = "X-Auth-Token"
    # dwave-cloud-client 0.14.8 finds its SAPI endpoint from the region (DWAVE_API_REGION, a
    # dwave.conf `region`, default na-west-1) through the Metadata API, unless an endpoint is set,
    # which beats any region (regions.py resolve_endpoints). So a session sets no endpoint: it
    # points the Metadata API at itself (DWAVE_METADATA_API_ENDPOINT, config/loaders.py
    # ENV_OPTION_MAP) and the regions' SAPI endpoints in its answer at itself too (session_urls);
    # the SDK then picks its region's as it always does. The SDK sends its token to the
    # Metadata API as to SAPI (api/client.py _set_session_auth), here the placeholder.
    session_env = MappingProxyType({"DWAVE_METADATA_API_ENDPOINT": "{url}/metadata/v1/",
                                    "DWAVE_API_TOKEN": "{credential}"})
    # The Metadata API lists regional SAPI endpoints, and hybrid and nonlinear solvers answer
    # `binary-ref`: absolute URLs the client follows with its token (client/base.py
    # _download_answer_worker).
    session_rewrites_urls = True
    meters_qpu_time = True
    qpu_answer_max = QPU_ANSWER_MAX
    qpu_access_us = staticmethod(qpu_access_us)

