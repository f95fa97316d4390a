"""One module per provider, each behind the small interface in `base`."""

from __future__ import annotations

from collections.abc import Iterable

from qpu_broker.common.custom_providers import CustomDefinition
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


def all_schemes(custom: Iterable[CustomDefinition] = ()) -> dict[str, Scheme]:
    """The built-in schemes, and one per custom definition (a custom name never shadows a built-in:
    common/custom_providers refuses it)."""
    schemes: list[Scheme] = [Ibm(), DWave(), Aws(), QCtrl(), Fujitsu(), IonQ(), Luna(), FujitsuQuantum()]
    schemes += [custom_scheme(d) for d in custom]
    return {s.provider: s for s in schemes}
