"""A provider's org-wide settings (`org-server provider set|clear`, the console's provider page):
where every org token of it may go besides the official hosts, checked and recorded in one place.
"""

from __future__ import annotations

from qpu_broker.common.reach import Reach, bounded_org_reach
from qpu_broker.orgserver.admin_record import AdminRecord, reach_change, reach_text
from qpu_broker.orgserver.store import OrgStore


def set_provider_reach(store: OrgStore, record: AdminRecord, provider: str, reach: Reach) -> Reach | None:
    """Replace `provider`'s settings with `reach` (a known provider: the caller checks); returns the
    ones replaced, if any, so the caller can say what went."""
    reach = bounded_org_reach(reach, f"provider {provider}")
    with record.changing() as note:
        before = store.org_reach().get(provider)
        store.set_org_reach(provider, reach)
        note("provider.set", provider, reach_text(reach) + (f" ({reach_change(before, reach) or 'as before'})"
                                                            if before is not None else ""))
    return before


def clear_provider_reach(store: OrgStore, record: AdminRecord, provider: str) -> Reach | None:
    """Clear `provider`'s settings; returns them, or None when it had none (nothing changed, nothing
    recorded: a typo must not read as done)."""
    if provider not in store.org_reach():
        return None
    with record.changing() as note:
        before = store.org_reach().get(provider)
        store.set_org_reach(provider, None)
        note("provider.clear", provider, f"was {reach_text(before)}" if before is not None else "was not set")
    return before
