"""The roles a user of the org has: members use org tokens, admins also manage them and the org."""

ROLES = ("member", "admin")
