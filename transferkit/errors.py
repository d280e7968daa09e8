"""The one exception type users see.

Every message is one line that names the file or value at fault and says what to do about it. The CLI prints
the message alone (no traceback); the Python API raises it so callers can catch it.
"""


class TransferkitError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataError(TransferkitError, ValueError):
    """Bad or unreadable training data."""


class BackboneError(TransferkitError, ValueError):
    """Unknown backbone, or weights that cannot be loaded here."""
