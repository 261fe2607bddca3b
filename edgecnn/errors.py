"""The exception for user mistakes: the CLI prints its message as one line and exits 1.

Anything else that escapes is a bug in edgecnn and may show a traceback.
"""


class EdgecnnError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""


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
