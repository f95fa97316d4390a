"""Token objects as users know them from the Luna tutorial.

`QpuToken` is both a reference (`QpuToken(source="personal", name="My IBM
Token")`, `QpuToken(source="inline", token=...)`) and what reads return (a
stored token's id, name, provider and timestamps, never its secret), so a token
you read can be handed straight to a `TokenProvider`.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgumentError
from .providers import AWS_SPLIT_FIELDS, PROVIDERS, check_provider
from .secret import Secret


class QpuTokenTypeEnum(str, enum.Enum):
    """Where a token lives. `GROUP` and `"group"` (the Luna 1.x names) are ORGANIZATION.

    Exported as `QpuTokenTypeEnum` and `QpuTokenSource` (luna-quantum 1.x's names) and as
    `QpuTokenType` (the tutorial's)."""

    PERSONAL = "personal"
    ORGANIZATION = "organization"
    INLINE = "inline"
    GROUP = "organization"  # noqa: PIE796 - an alias on purpose: QpuTokenTypeEnum.GROUP is ORGANIZATION

    @classmethod
    def _missing_(cls, value: object) -> QpuTokenTypeEnum | None:
        value = getattr(value, "value", value)  # another library's enum member (luna-quantum's)
        if isinstance(value, str):
            lowered = value.lower()
            if lowered == "group":
                return cls.ORGANIZATION
            for member in cls:
                if member.value == lowered:
                    return member
        return None

    @classmethod
    def parse(cls, value: QpuTokenTypeEnum | str | None,
              default: QpuTokenTypeEnum | None = None) -> QpuTokenTypeEnum:
        if value is None:
            if default is None:
                raise InvalidArgumentError("a token type is needed: personal or organization")
            return default
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgumentError(
                f"unknown token type {value!r}: use personal, organization (or group) or inline"
            ) from None

    def __repr__(self) -> str:
        # The tutorial prints the Luna SDK's enum; keep its look.
        return f"<QpuTokenTypeEnum.{self.name}: {self.value!r}>"

    __str__ = str.__str__


QpuTokenType = QpuTokenSource = QpuTokenTypeEnum


class QpuToken:
    """A token reference, or a stored token as read from the broker."""

    __slots__ = ("created_at", "expires_at", "id", "mode", "name", "provider", "source", "token", "updated_at")

    def __init__(
        self,
        source: QpuTokenType | str,
        name: str | None = None,
        token: str | bytes | Secret | None = None,
        *,
        id: str | None = None,
        provider: str | None = None,
        created_at: datetime.datetime | None = None,
        updated_at: datetime.datetime | None = None,
        expires_at: datetime.datetime | None = None,
        mode: str | None = None,
    ) -> None:
        self.source = QpuTokenType.parse(source)
        if self.source is QpuTokenType.INLINE:
            if token is None or name is not None or id is not None:
                raise InvalidArgumentError("an inline QpuToken takes token=..., and no name or id")
        elif token is not None:
            raise InvalidArgumentError(
                f"a {self.source.value} QpuToken refers to a stored token by name or id; "
                "pass the secret with source='inline' instead"
            )
        elif name is None and id is None:
            raise InvalidArgumentError(f"a {self.source.value} QpuToken needs a name or an id")
        self.name = name
        self.id = id
        self.provider = check_provider(provider) if provider is not None else None
        self.token = Secret(token) if token is not None else None
        self.created_at = created_at
        self.updated_at = updated_at
        self.expires_at = expires_at  # None: never expires
        # An organization token read from the broker: "relay" (its secret stays on the org server)
        # or "cached" (members' daemons hold it); None otherwise.
        self.mode = mode

    @classmethod
    def coerce(cls, token: object) -> QpuToken:
        """Ours as it is; any other object with `source`, `name` and `token` (luna-quantum's
        QpuToken) read by those attributes."""
        if isinstance(token, QpuToken):
            return token
        if not hasattr(token, "source"):
            raise InvalidArgumentError(f"a QpuToken is needed, not {type(token).__name__}")
        secret = getattr(token, "token", None)
        return cls(getattr(token.source, "value", token.source), name=getattr(token, "name", None),
                   token=secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret)

    @property
    def token_type(self) -> QpuTokenType:
        return self.source

    def model_dump(self) -> dict[str, Any]:
        """Its fields as a dict (as pydantic's model_dump, for luna-quantum 1.x code); an inline
        token's secret stays a Secret, printed as [secure]."""
        if self.source is QpuTokenType.INLINE:
            return {"source": self.source, "name": None, "token": self.token}
        if self.provider is None:  # a reference
            return {"source": self.source, "name": self.name, "id": self.id, "token": None}
        return {"id": self.id, "name": self.name, "provider": self.provider, "token_type": self.source,
                "created_at": self.created_at, "updated_at": self.updated_at, "expires_at": self.expires_at}

    def _fields(self) -> list[tuple[str, Any]]:
        if self.source is QpuTokenType.INLINE:
            return [("source", self.source.value), ("token", self.token)]
        fields = [("id", self.id), ("name", self.name), ("provider", self.provider),
                  ("expires_at", self.expires_at.isoformat(timespec="seconds") if self.expires_at else None)]
        if self.provider is None:  # a reference, not a read result
            fields = [("source", self.source.value), ("name", self.name), ("id", self.id)]
        return [(k, v) for k, v in fields if v is not None]

    def __str__(self) -> str:
        return " ".join(f"{k}={v!r}" if k != "token" else f"{k}={v}" for k, v in self._fields())

    def __repr__(self) -> str:
        return f"QpuToken({', '.join(f'{k}={v!r}' if k != 'token' else f'{k}={v}' for k, v in self._fields())})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QpuToken):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


class TokenProvider:
    """Which token to use for each provider in a call.

    AWS takes one credential set: `aws=` (an inline "AKID:SECRET[:SESSION]" or a
    stored token), or the tutorial's split form `aws_access_key=` +
    `aws_secret_access_key=` [+ `aws_session_token=`]; half a pair is an error.
    Providers defined in the daemon's config or by the org: `custom={"NAME": QpuToken(...)}`.
    """

    FIELDS = PROVIDERS
    AWS_SPLIT = AWS_SPLIT_FIELDS

    def __init__(self, *, custom: Mapping[str, QpuToken | None] | None = None, **tokens: QpuToken | None) -> None:
        for name in custom or {}:
            if check_provider(name) != name or name in self.FIELDS or name in self.AWS_SPLIT:
                raise InvalidArgumentError(f"custom={{{name[:40]!r}: ...}}: a custom provider's name is lower-case and "
                                           f"not a built-in's (give {name[:40]}= for a built-in)")
        self._custom = set(custom or {})
        tokens = {**tokens, **(custom or {})}
        unknown = set(tokens) - set(self.FIELDS) - set(self.AWS_SPLIT) - self._custom
        if unknown:
            raise InvalidArgumentError(
                f"unknown TokenProvider field(s) {', '.join(sorted(unknown))}: "
                f"use {', '.join(self.FIELDS + self.AWS_SPLIT)}"
            )
        for key, value in tokens.items():
            if value is not None and not isinstance(value, QpuToken):
                try:
                    tokens[key] = QpuToken.coerce(value)
                except InvalidArgumentError:
                    raise InvalidArgumentError(
                        f"TokenProvider.{key} must be a QpuToken, not {type(value).__name__}") from None
        key_id, secret = tokens.get("aws_access_key"), tokens.get("aws_secret_access_key")
        if (key_id is None) != (secret is None):
            missing = "aws_secret_access_key" if secret is None else "aws_access_key"
            raise InvalidArgumentError(f"AWS credentials need both halves: {missing} is missing")
        if key_id is not None and tokens.get("aws") is not None:
            raise InvalidArgumentError("give AWS credentials either as aws= or as the split form, not both")
        if tokens.get("aws_session_token") is not None and key_id is None:
            raise InvalidArgumentError("aws_session_token needs aws_access_key and aws_secret_access_key")
        self._tokens = {k: v for k, v in tokens.items() if v is not None}

    @classmethod
    def of(cls, chosen: Mapping[str, QpuToken]) -> TokenProvider:
        """By provider name, built-in or custom."""
        return cls(**{p: t for p, t in chosen.items() if p in cls.FIELDS},
                   custom={p: t for p, t in chosen.items() if p not in cls.FIELDS})

    def __getattr__(self, name: str) -> QpuToken | None:
        if name in self.FIELDS or name in self.AWS_SPLIT:
            return self._tokens.get(name)
        raise AttributeError(name)

    @classmethod
    def coerce(cls, provider: object) -> TokenProvider | None:
        """Ours as it is; any other object with our field names as attributes (luna-quantum's
        TokenProvider) read field by field."""
        if provider is None or isinstance(provider, TokenProvider):
            return provider
        names = [f for f in cls.FIELDS + cls.AWS_SPLIT if hasattr(provider, f)]
        if not names:
            raise InvalidArgumentError(f"qpu_tokens must be a TokenProvider, not {type(provider).__name__}")
        return cls(**{f: getattr(provider, f) for f in names})

    def items(self) -> list[tuple[str, QpuToken]]:
        """Every field given, built-in and custom (by the provider's name)."""
        return list(self._tokens.items())

    @property
    def custom(self) -> dict[str, QpuToken]:
        return {k: v for k, v in self._tokens.items() if k in self._custom}

    def model_dump(self) -> dict[str, Any]:
        return {field: token.model_dump() for field, token in self._tokens.items()}

    def __repr__(self) -> str:
        return f"TokenProvider({', '.join(f'{k}={v!r}' for k, v in self._tokens.items())})"
