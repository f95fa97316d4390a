"""One module per provider, each behind the small interface in `base`."""

from __future__ import annotations

from .aws import Aws
from .base import Scheme
from .dwave import DWave
from .fujitsu import Fujitsu
from .ibm import Ibm
from .ionq import IonQ
from .luna import Luna
from .qctrl import QCtrl


def all_schemes() -> dict[str, Scheme]:
    schemes: list[Scheme] = [Ibm(), DWave(), Aws(), QCtrl(), Fujitsu(), IonQ(), Luna()]
    return {s.provider: s for s in schemes}
