"""One module per provider, each behind the small interface in `base`; `Schemes` says which one a
credential's calls use, and `traits` what the rest of the program asks of a provider by its name
(its quirks: a new provider touches this folder and the provider list, nothing else)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from qpu_broker_client.providers import PROVIDERS

from qpu_broker.common.custom_providers import CustomDefinition
from qpu_broker.common.reach import Owner
from qpu_broker.common.secret_shapes import check_text
from qpu_broker.providers.aws import Aws
from qpu_broker.providers.base import Scheme
from qpu_broker.providers.custom import custom_scheme
from qpu_broker.providers.dwave import DWave
from qpu_broker.providers.fujitsu import Fujitsu
from qpu_broker.providers.fujitsu_quantum import FujitsuQuantum
from qpu_broker.providers.ibm import Ibm
from qpu_broker.providers.ionq import IonQ
from qpu_broker.providers.luna import Luna
from qpu_broker.providers.qctrl import QCtrl

# The built-in providers' schemes, one per name of the provider list (qpu_broker_client.providers.PROVIDERS).
BUILT_IN: tuple[type[Scheme], ...] = (Ibm, DWave, Aws, QCtrl, Fujitsu, IonQ, Luna, FujitsuQuantum)
_BY_NAME: dict[str, type[Scheme]] = {cls.provider: cls for cls in BUILT_IN}
# A TokenProvider field that carries part of a provider's credential (AWS's split form) -> that provider.
_SPLIT_OF: dict[str, str] = {field: cls.provider for cls in BUILT_IN for field in cls.split_fields}


def traits(provider: str) -> type[Scheme]:
    """What the daemon and the org server ask of a provider by its name alone (its quirks: see
    Scheme): a built-in's scheme class; for any other name (a custom provider's, or none known)
    the base, whose defaults are a provider with no quirks."""
    return _BY_NAME.get(provider, Scheme)


def provider_of_field(field: str) -> str:
    """The provider a TokenProvider field is for: a split field's provider, else the field's own name."""
    return _SPLIT_OF.get(field, field)


def normalize_secret(provider: str, secret: bytes, max_bytes: int) -> bytes:
    """The bytes to seal for a `provider` credential: checked for size and text, and in the
    canonical shape its scheme gives (an AWS set as canonical JSON)."""
    shaped = traits(provider).secret_shape(check_text(provider, secret, max_bytes))
    return secret if shaped is None else shaped


def all_schemes(custom: Iterable[CustomDefinition] = ()) -> dict[str, Scheme]:
    """The built-in schemes, and one per custom definition (a custom name never shadows a built-in:
    common/custom_providers refuses it)."""
    schemes: list[Scheme] = [cls() for cls in BUILT_IN]
    schemes += [custom_scheme(d) for d in custom]
    return {s.provider: s for s in schemes}


class Schemes:
    """The scheme a credential's calls use. A built-in provider's is the same for every credential.
    A custom provider's comes from whoever owns the credential, as its Reach does: the daemon's
    config (`config`, read at start) for personal and inline tokens, the org's definitions (`org`,
    as last heard from the org server) for org tokens. So a name both define is two providers,
    each for its owner's tokens: a member's config never redefines where an org token goes or how
    it is sent, and an org never redefines a member's own."""

    def __init__(self, config: Iterable[CustomDefinition] = (),
                 org: Callable[[], Mapping[str, CustomDefinition]] = dict) -> None:
        self._own = all_schemes(config)
        self._org = org
        self._org_made: dict[str, tuple[CustomDefinition, Scheme]] = {}  # the last scheme made of each definition

    def get(self, provider: str, owner: Owner) -> Scheme | None:
        """`provider`'s scheme for a credential of `owner`; None when that owner defines no such provider."""
        if owner is Owner.CONFIG or provider in PROVIDERS:
            return self._own.get(provider)
        definition = self._org().get(provider)
        if definition is None:
            return None
        made = self._org_made.get(provider)
        if made is None or made[0] != definition:  # new, or changed: its next call uses the new definition
            made = self._org_made[provider] = (definition, custom_scheme(definition))
        return made[1]

    def forget(self) -> None:
        """Drop what the daemon owner's schemes derived from credentials (AWS's signing keys)."""
        for scheme in self._own.values():
            scheme.forget()

    def names(self) -> tuple[str, ...]:
        """The providers the daemon's owner has (built-ins, then their config's custom ones)."""
        return tuple(self._own)

    def __getitem__(self, provider: str) -> Scheme:
        """A built-in's or the config's scheme (for what is the daemon owner's alone)."""
        return self._own[provider]
