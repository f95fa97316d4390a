"""What a forwarded request answered: status, headers and body, exactly as sent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class Headers(Mapping[str, str]):
    """Response headers: case-insensitive; repeated names joined with ", "."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> str:
        values = [v for k, v in self._items if k.lower() == name.lower()]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __iter__(self) -> Iterator[str]:
        seen: dict[str, None] = {}
        for k, _ in self._items:
            seen.setdefault(k.lower())
        return iter(seen)

    def __len__(self) -> int:
        return len({k.lower() for k, _ in self._items})

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class ForwardResponse:
    """What the provider answered: status, headers and body, exactly as sent."""

    def __init__(self, status_code: int, headers: list[tuple[str, str]], content: bytes, http_version: str) -> None:
        self.status_code = status_code
        self.headers = Headers(headers)
        self.content = content
        self.http_version = http_version

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        import json

        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<ForwardResponse [{self.status_code}]>"
