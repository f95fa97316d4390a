"""One module per provider, each behind the small interface in `base`."""

from __future__ import annotations

from qpu_broker.providers.aws import Aws
from qpu_broker.providers.base import Scheme
from qpu_broker.providers.dwave import DWave
from qpu_broker.providers.fujitsu import Fujitsu
from qpu_broker.providers.ibm import Ibm
from qpu_broker.providers.ionq import IonQ
from qpu_broker.providers.luna import Luna
from qpu_broker.providers.qctrl import QCtrl


def all_schemes() -> dict[str, Scheme]:
    schemes: list[Scheme] = [Ibm(), DWave(), Aws(), QCtrl(), Fujitsu(), IonQ(), Luna()]
    return {s.provider: s for s in schemes}
