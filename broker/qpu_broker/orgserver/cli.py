"""`qpu-broker org-server ...`: set up, administer and run the org server; its command table,
one module per group of commands (orgserver/cli_*.py), mounted by cli/main.py.

User, group and provider commands work on the data dir directly (the server need not
run, and no network credential is needed: whoever can read the data dir owns the org
anyway); a running server notices their changes within a fraction of a second.
Enrollment codes are printed once, to stdout, and never stored in clear.
"""

from __future__ import annotations

from qpu_broker.common.commands import Entry, Group
from qpu_broker.orgserver import (
    cli_groups,
    cli_providers,
    cli_quotas,
    cli_records,
    cli_setup,
    cli_tls,
    cli_tokens,
    cli_users,
)

# In the order help pages and completion list them.
COMMANDS: tuple[Entry, ...] = (
    Group("", "run and administer the reference organization server",
          ("qpu-broker org-server init --data /srv/qpu-org --org 'Acme' --admin alice --tls-host org.acme.example",
           "qpu-broker org-server serve --data /srv/qpu-org --listen 0.0.0.0:7443",
           "qpu-broker org-server user add bob --data /srv/qpu-org     # prints bob's enrollment code once")),
    *cli_setup.COMMANDS,
    *cli_users.COMMANDS,
    *cli_tls.COMMANDS,
    *cli_providers.COMMANDS,
    *cli_records.COMMANDS,
    *cli_quotas.COMMANDS,
    *cli_groups.COMMANDS,
    *cli_tokens.COMMANDS,
)
