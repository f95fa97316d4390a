"""Headers no request may carry (RFC 9110: a name is a token, a value holds no control character
but tab), each with what the refusal must name. `CANARY` stands in for a secret pasted where it
should not be: no error or log line may show it. One table for Forward, Sign and relay tests
(forward/request_syntax.check_headers is the rule)."""

from __future__ import annotations

CANARY = "value-canary"

BAD = [
    # Names: whitespace around (' Authorization' went upstream as an obs-fold line), separators,
    # CR, LF and NUL, nothing at all, bytes past ASCII, and a whole header pasted as a name.
    ((" Authorization", f"Bearer {CANARY}"), "'Authorization') has a space at position 0"),
    (("\tX-Auth-Token", CANARY), "'X-Auth-Token') has a tab at position 0"),
    (("X-Auth-Token ", CANARY), "'X-Auth-Token') has a space at position 12"),
    (("X Note", CANARY), "'X') has a space at position 1"),
    (("X-Note:", CANARY), "'X-Note') has ':' at position 6"),
    (("X-Note\r\nX-Evil", CANARY), "'X-Note') has a line break (CR) at position 6"),
    (("X-Note\n", CANARY), "'X-Note') has a line break (LF) at position 6"),
    (("X-Note\0", CANARY), "'X-Note') has a NUL at position 6"),
    (("X-N\u00f6te", CANARY), "'X-N') has 'ö' at position 3"),
    (("", CANARY), "the name of header 2 is empty"),
    ((f"Authorization: Bearer {CANARY}", ""), "'Authorization') has ':' at position 13"),
    # Values: CR, LF and NUL (a second header, or a cut one), and every other control character.
    (("X-Note", f"{CANARY}\r\nX-Evil: 1"), "the value of header X-Note holds a line break (CR)"),
    (("X-Note", f"{CANARY}\n"), "the value of header X-Note holds a line break (LF)"),
    (("X-Note", f"{CANARY}\r"), "the value of header X-Note holds a line break (CR)"),
    (("X-Note", f"value\0{CANARY}"), "the value of header X-Note holds a NUL"),
    (("X-Note", f"value\x0b{CANARY}"), "the value of header X-Note holds U+000B"),
    (("X-Note", f"\x1b{CANARY}"), "the value of header X-Note holds U+001B"),
    (("X-Note", f"{CANARY}\x7f"), "the value of header X-Note holds U+007F"),
    (("Authorization", f"Bearer {CANARY}\r\n"), "the value of header Authorization holds a line break (CR)"),  # dropped anyway: refused all the same
]

GOOD = [("Accept", "application/json"), ("X-Note", "a tab\there, UTF-8 \u00e9, and !#$%&'*+-.^_`|~"), ("X-Empty", "")]
