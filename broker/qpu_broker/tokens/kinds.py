"""The kinds of token a reference names (SPEC.md): stored here, held by the org, or passed per call."""

PERSONAL = "personal"
ORGANIZATION = "organization"
INLINE = "inline"
