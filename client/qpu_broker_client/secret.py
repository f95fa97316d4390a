"""A value that cannot leak by accident: it prints as [secure] and will not pickle."""

from __future__ import annotations


class Secret:
    """Holds secret bytes; `reveal()` is the only way to read them."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret([secure])"

    def __str__(self) -> str:
        return "[secure]"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        import hmac  # here: it loads OpenSSL's hashlib, which no command that only lists needs

        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        raise TypeError("Secret is not hashable")

    def __reduce__(self) -> str:
        raise TypeError("Secret cannot be pickled")
