"""Exceptions of the data pipeline; each message says what went wrong and where."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class SplitFormatError(ValueError):
    """A split or list file that cannot be read. The message names the file and the line."""


class VideoDecodeError(RuntimeError):
    """A video that cannot be used: missing, empty, truncated or undecodable.

    Attributes:
        path: the file.
        reason: a short human-readable reason (``"file not found"``, ``"empty file (0 bytes)"``...).
    """

    def __init__(self, path: Union[str, Path], reason: Optional[str] = None):
        if reason is None:
            # One argument: a whole message. DataLoader re-raises a worker's exception as
            # ``type(error)(message)`` (the message holds the original, with the path); accepting
            # it keeps the exception type across worker processes.
            self.path, self.reason = "", str(path)
            super().__init__(self.reason)
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickled across DataLoader worker boundaries
        return (type(self), (self.path, self.reason))
