"""Errors a user can act on: each message names the problem and the fix."""


class LiverSegError(Exception):
    """Bad input or environment. The CLI prints the message on one line and exits with status 2."""


class MethodUnavailableError(LiverSegError):
    """The requested segmenter cannot run here (not implemented yet, or its model file is missing)."""


class CancelledError(Exception):
    """Raised inside a segmenter when the caller's cancel flag is set; nothing has been written."""
