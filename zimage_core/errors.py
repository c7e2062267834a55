"""Error types. Every user-facing failure is a ZImageError with a message that names the file/value
and says what was expected, so nodes and the CLI can show it without a torch traceback."""


class ZImageError(ValueError):
    """Base class for user-facing errors of the pack."""


class CheckpointError(ZImageError):
    """A weight file or folder could not be used (wrong model family, corrupt, incomplete)."""


class InputError(ZImageError):
    """A run-time input (latent, size, prompt, option) is out of range."""
