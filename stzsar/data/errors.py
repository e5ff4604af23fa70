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


class ShortVideoError(VideoDecodeError):
    """A video whose frames end before its packets or header said (within the truncation
    tolerance): ``available`` frames exist of ``expected``. Not a reason to skip the video: the
    sampler picks its frames among those that exist (:meth:`PyAVVideo.read_clip`)."""

    def __init__(self, path: Union[str, Path], available: Optional[int] = None, expected: Optional[int] = None):
        if available is None:  # one argument: a whole message (see VideoDecodeError)
            super().__init__(path)
            self.available = self.expected = None
            return
        self.available, self.expected = int(available), int(expected if expected is not None else available)
        super().__init__(path, f"decoded short ({self.available} of {self.expected} frames)")

    def __reduce__(self):
        if self.available is None:
            return (type(self), (self.reason,))
        return (type(self), (self.path, self.available, self.expected))
