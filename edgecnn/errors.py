"""The exception for user mistakes: the CLI prints its message as one line and exits 1.

Anything else that escapes is a bug in edgecnn and may show a traceback.
"""


class EdgecnnError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""


class SettingError(EdgecnnError):
    """A setting (a field of a config dataclass) with a value it cannot take.

    The message names the setting as the library knows it (`batch_size 0: expected 1 or more`);
    the command line shows the flag that set it instead (`--batch-size 0: ...`, edgecnn.cli).
    """

    def __init__(self, setting: str, value: object, expected: str):
        self.setting, self.value, self.expected = setting, value, expected
        super().__init__(self.message(setting))

    def message(self, name: str) -> str:
        """The message with `name` (a setting or the flag that set it) in front."""
        return f"{name} {self.value}: {self.expected}"


class DataError(EdgecnnError):
    """A dataset folder or image that cannot be used."""


class ImageError(DataError):
    """One image that cannot be decoded."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit (a decompression bomb, or simply too large to accept)."""


class ModelError(EdgecnnError):
    """A model folder or model file that cannot be used."""


class DeviceError(EdgecnnError):
    """An execution provider (CUDA, CPU) that is missing or could not be created."""


class MissingDependency(EdgecnnError):
    """An optional dependency that this command needs is not installed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def require(module: str, extra: str):
    """Import an optional module or raise `MissingDependency` naming the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency(
            f'{module} is not installed ({exc}); install it with: pip install "edgecnn[{extra}]"'
        ) from None


def check_at_least(setting: str, value, low, note: str = "") -> None:
    """`value` >= `low`, else a SettingError ("expected LOW or more" plus `note`)."""
    if value < low:
        raise SettingError(setting, value, f"expected {low} or more{note}")


def check_above(setting: str, value, low, what: str = "") -> None:
    """`value` > `low`, else a SettingError."""
    if not value > low:
        raise SettingError(setting, value, f"expected {what or 'a value'} above {low}")


def one_of(choices) -> str:
    """`choices` for a message: "a or b", "one of a, b, c" (a single choice as itself)."""
    listed = [str(c) for c in choices]
    if len(listed) <= 2:
        return " or ".join(listed)
    return "one of " + ", ".join(listed)


def check_one_of(setting: str, value, choices) -> None:
    """`value` in `choices`, else a SettingError listing them."""
    if value not in choices:
        raise SettingError(setting, value, f"expected {one_of(choices)}")
