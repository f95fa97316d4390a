"""Luna: `Luna-API-Key`; QPU tokens for the run travel in the JSON body's `qpu_tokens`."""

from types import MappingProxyType

from qpu_broker.providers.base import HeaderScheme


class Luna(HeaderScheme):
    provider = "luna"
    hosts = ("api.aqarios.com",)
    header = "Luna-API-Key"
    fills_body_tokens = True
    # luna-quantum 1.3 (client/controllers/luna_platform_client.py): LUNA_BASE_URL (default
    # https://api.aqarios.com; it appends /luna-solve/api/v1 and kin) and LUNA_API_KEY.
    session_env = MappingProxyType({"LUNA_BASE_URL": "{url}", "LUNA_API_KEY": "{credential}"})
