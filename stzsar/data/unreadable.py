"""What to tell a user whose videos could not be read: how many, the first few, the likely cause.

``stzsar train`` stops with :func:`unreadable_message` when a micro-batch has no readable video or
more than ``data.max_unreadable`` of the split cannot be read. The advice names the options of the
calling command (``data.root`` in a configuration, ``--root`` on a command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

#: Paths a message shows; the rest are counted.
SHOWN = 5


def likely_cause(
    reasons: Sequence[str],
    root: Optional[Union[str, Path]],
    *,
    root_option: str = "data.root",
    list_option: str = "data.train_list",
    format_option: str = "data.format",
) -> str:
    """The most likely cause of unreadable videos with these ``reasons``, as advice."""
    if root is not None and not Path(root).is_dir():
        return f"{root_option} {root} is not a folder: a wrong root"
    where = f" under {root_option} {root}" if root is not None else ""
    missing = sum(reason.startswith("file not found") for reason in reasons)
    if reasons and missing == len(reasons):
        return (f"these files are not{where}: a wrong root, a list ({list_option}) whose paths are "
                f"relative to another folder or name other files, or a list read with the wrong "
                f"{format_option}")
    if 2 * missing > len(reasons):
        return (f"most of these files are not{where}: check the root and the list; "
                "`stzsar data inspect` lists every missing file")
    return ("the files exist but cannot be decoded: damaged or empty files, or a container or codec "
            "PyAV cannot read; `stzsar data inspect --decode` checks every file")


def unreadable_message(
    headline: str,
    videos: Sequence[Tuple[str, str]],
    root: Optional[Union[str, Path]],
    **options: str,
) -> str:
    """``headline``, then the first :data:`SHOWN` of ``videos`` (``(path, reason)``), then the
    likely cause (``options``: the option names of :func:`likely_cause`)."""
    lines = [headline]
    lines += [f"  {path}: {reason}" for path, reason in videos[:SHOWN]]
    if len(videos) > SHOWN:
        lines.append(f"  ... and {len(videos) - SHOWN} more")
    lines.append("likely cause: " + likely_cause([reason for _, reason in videos], root, **options))
    return "\n".join(lines)
