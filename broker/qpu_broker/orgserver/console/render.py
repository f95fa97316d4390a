"""Pages from templates that escape by default: Jinja2 with autoescape on for every template (HTML
and SVG alike), undefined names an error rather than empty text. A value reaches a page as text
unless code marks it otherwise, and nothing here does: what a member or an admin named a thing
(`<script>` included) is shown as they typed it."""

from __future__ import annotations

from qpu_broker_client.errors import FailedPreconditionError
from qpu_broker_client.usage import iso

try:
    import jinja2
except ImportError:  # the console extra: the rest of the org server runs without it
    jinja2 = None

NEEDS = "the web console needs Jinja2: pip install 'qpu-broker[console]'"


def environment() -> jinja2.Environment:
    if jinja2 is None:
        raise FailedPreconditionError(NEEDS)
    env = jinja2.Environment(loader=jinja2.PackageLoader("qpu_broker.orgserver.console", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = lambda us: iso(us) if us else "never"  # the one time format of listings
    return env
