"""The one base of every error nbhelpers raises on purpose.

Each such error's message says what was wrong and what to do, in the
notebooks' terms (`-p NAME VALUE`). Notebooks show them as one line instead
of a traceback (nbhelpers.notebook); anything else is a bug and keeps its
traceback.
"""

__all__ = ["ExplainedError"]


class ExplainedError(Exception):
    """An error whose message says what was wrong and what to do about it."""
