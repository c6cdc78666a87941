"""Project exceptions: user-facing errors that name the file or option at fault."""


class NucleisegError(ValueError):
    """Base class for errors caused by user input (files, options); the CLI prints them without a traceback."""


class DatasetLayoutError(NucleisegError):
    """A dataset folder does not have the expected layout."""


class ImageReadError(NucleisegError):
    """An image or mask file could not be decoded."""


class AnnotationError(NucleisegError):
    """An annotation file (Aperio XML) is malformed or unsafe."""


class ConfigError(NucleisegError):
    """A configuration value is invalid or an invalid combination of values."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when the message is empty), for one-line reports."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
