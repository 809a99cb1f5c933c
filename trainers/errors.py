"""The one exception type for expected failures (bad input, a busy or inconsistent run folder, a damaged file).

The command line prints its message as one line and exits 2; anything else that escapes is a bug and keeps its
traceback. A subclass of ValueError, so that callers catching ValueError keep working.
"""


class UserError(ValueError):
    """A failure the user can fix; the message names the file or field, the value and what is allowed."""
