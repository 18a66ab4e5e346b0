"""The one exception type for mistakes a user can make (bad config, mix, path).

The CLI and the server turn it into a one-line message; anything else is a bug and keeps its traceback.
"""


class LerpError(ValueError):
    """A user-facing error whose message says what to change."""
