"""The one base class for errors a user can cause."""

from __future__ import annotations


class UserError(Exception):
    """Caused by what the user sent, or by load: its message (bilingual) is shown to them, logged as one
    line without a traceback, and the server keeps serving."""
