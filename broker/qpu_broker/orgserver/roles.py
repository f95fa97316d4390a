"""The roles a user of the org has: members use org tokens, admins also manage them and the org,
and service members (CI, background services) use them like members, from devices that may
expire, enrolled by codes good for several devices."""

ROLES = ("member", "admin", "service")
ADMIN, SERVICE = "admin", "service"
