"""The one shape every edgecnn registry has: a name -> entry mapping, filled one entry at a time.

Models (`models.ARCHITECTURES`), execution providers (`providers.PROVIDERS`), output formats
(`predict.OUTPUT_FORMATS`, `row_files.OUTPUT_WRITERS`), distribution strategies
(`distribute.STRATEGIES`), export variants (`variants.VARIANTS`), INT8 rewrites
(`rewrites.REWRITES`) and datasets (`datasets.DATASETS`) are each a `Registry`:

    FORMATS = Registry("format")

    @FORMATS.register("json")
    def write_json(result, out): ...

    FORMATS["json"]  # -> write_json
    FORMATS["xml"]   # SettingError: format xml: expected one of json, ...

Entries iterate in registration order. Looking up an unknown name raises `SettingError` naming the
setting (the config field the name came from, so the command line can show its flag instead) and
listing every known name; registering a name twice is a bug and raises `ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from edgecnn.errors import SettingError, one_of

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Named entries of one kind, looked up by the value of one setting.

    setting: the config field whose value names an entry ("model", "device", "format", ...).
    what: words before the list of names in the error ("a file ending in" -> "expected a file
        ending in .jsonl or .parquet"); note: words after it.
    """

    def __init__(self, setting: str, *, what: str = "", note: str = ""):
        self.setting, self.what, self.note = setting, what, note
        self._entries: dict[str, T] = {}

    # -- filling ------------------------------------------------------------------------------
    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name` and return it; a name registered twice is a ValueError."""
        if name in self._entries:
            raise ValueError(f"{self.setting} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` adds the function or class under `name`."""

        def wrap(entry: T) -> T:
            return self.add(name, entry)

        return wrap

    __setitem__ = add  # REGISTRY[name] = entry: the same as add (a second entry of one name is refused)

    def __delitem__(self, name: str) -> None:
        """Remove `name` (for tests that add an entry for a while, e.g. with monkeypatch.setitem)."""
        del self._entries[name]

    # -- reading ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        """The entry registered as `name`, or a SettingError naming the setting and every known name."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value is not a name either
            raise self.unknown(name) from None

    def get(self, name: str, default=None):
        """The entry registered as `name`, or `default`."""
        try:
            return self._entries.get(name, default)
        except TypeError:
            return default

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def expected(self) -> str:
        """What the setting takes, for messages: "expected one of a, b, c" (with `what` and `note`)."""
        return f"expected {self.what + ' ' if self.what else ''}{one_of(self._entries)}{self.note}"

    def unknown(self, value: object) -> SettingError:
        """The error for `value` (as the user gave it: "npu:1", "rows.csv"), which names no entry."""
        return SettingError(self.setting, value, self.expected())

    def __repr__(self) -> str:
        return f"Registry({self.setting!r}: {', '.join(self._entries)})"
