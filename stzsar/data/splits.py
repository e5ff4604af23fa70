"""Datasets as a root folder plus a split definition, read from the formats users have.

A :class:`VideoSplit` holds the class names (the class index is the position), the videos as
``(path, label)`` pairs under the root, and where it came from. Readers:

- :func:`read_list` -- BIKE/Text4Vis lists: ``path label`` or ``path num_frames label`` a line,
  labels indexing a class list (their ``id,name`` CSV, or any format of
  :func:`stzsar.classes.read_class_list`);
- :func:`read_ucf101` -- UCF-101 official ``classInd.txt``, ``trainlist0N.txt`` (``path label``,
  1-based) and ``testlist0N.txt`` (path only; the class is the folder);
- :func:`read_hmdb51` -- HMDB-51 official ``testTrainMulti_7030_splits/<class>_test_split<N>.txt``
  (``video.avi 0|1|2``: 1 train, 2 test, 0 unused);
- :func:`read_kinetics_csv` -- Kinetics CSV ``label,youtube_id,time_start,time_end,split[,is_cc]``,
  clips named ``<youtube_id>_<start:06d>_<end:06d>.mp4``;
- :func:`build_split` -- one entry point for all of them (used by ``stzsar data inspect``).

Listed paths may omit the extension (frame-folder lists such as BIKE's UCF-101/HMDB-51 lists):
:meth:`VideoSplit.locate` then looks for the usual video extensions. A flat list (no folder in the
path, as Kinetics) also finds videos stored in per-class folders.

Malformed lines raise :class:`~stzsar.data.errors.SplitFormatError` naming the file and line;
unknown class names raise it naming the class.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Union

from ..classes import ClassIndex, canonical_name, read_class_list
from .errors import SplitFormatError

PathLike = Union[str, Path]

#: Extensions tried, in order, for listed paths that have none.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")

#: ``format`` names accepted by :func:`build_split`.
FORMATS = ("bike", "text4vis", "ucf101", "hmdb51", "kinetics")


class Video(NamedTuple):
    """One video of a split: its path (root joined with the listed path) and class index."""

    path: Path
    label: int


@dataclass
class VideoSplit:
    """A dataset split: class names, videos under a root, and a description of its source.

    ``classes[label]`` names a video's class; ``videos[i]`` is ``(path, label)``.
    """

    name: str
    root: Path
    classes: List[str]
    videos: List[Video]
    source: str = ""
    #: free-form facts about how the split was made (protocol, seed, ...), for reports
    meta: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        # Plain (path, label) pairs are accepted and made into Video records.
        self.videos = [v if isinstance(v, Video) else Video(Path(v[0]), int(v[1])) for v in self.videos]
        for i, (_, label) in enumerate(self.videos):
            if not 0 <= label < len(self.classes):
                raise ValueError(
                    f"{self.name}: video {i} has label {label}, outside the {len(self.classes)} classes"
                )

    def __len__(self) -> int:
        return len(self.videos)

    def __repr__(self) -> str:
        return (
            f"VideoSplit(name={self.name!r}, root={str(self.root)!r}, classes={len(self.classes)}, "
            f"videos={len(self.videos)})"
        )

    def counts(self) -> List[int]:
        """Videos per class, in class order."""
        counts = [0] * len(self.classes)
        for _, label in self.videos:
            counts[label] += 1
        return counts

    def candidates(self, index: int) -> List[Path]:
        """Where video ``index`` may be, in the order :meth:`locate` tries."""
        path, label = self.videos[index]
        names = [path.name]
        if path.suffix.lower() not in VIDEO_EXTENSIONS:  # frame-folder lists name no extension
            names += [path.name + ext for ext in VIDEO_EXTENSIONS]
        folders = [path.parent]
        if path.parent == self.root:  # flat lists (Kinetics): videos may sit in per-class folders
            class_name = self.classes[label]
            folders += [self.root / f for f in dict.fromkeys((class_name, class_name.replace(" ", "_")))]
        return [folder / name for folder in folders for name in names]

    def locate(self, index: int) -> Optional[Path]:
        """The existing file of video ``index``, or ``None`` when none of the candidates exists."""
        for option in self.candidates(index):
            if option.is_file():
                return option
        return None

    def subset(self, indices: Iterable[int], name: Optional[str] = None, **meta: object) -> "VideoSplit":
        """A split with the videos ``indices`` (same classes and root)."""
        chosen = [self.videos[i] for i in indices]
        return VideoSplit(
            name=name or self.name,
            root=self.root,
            classes=list(self.classes),
            videos=chosen,
            source=self.source,
            meta={**self.meta, **meta},
        )


# -- helpers ---------------------------------------------------------------------------------------
def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return path.read_text(encoding="utf-8-sig").splitlines()


def _classes(labels: Union[PathLike, Sequence[str], None], what: str) -> List[str]:
    if labels is None:
        raise ValueError(f"{what}: a class list is needed (labels=...)")
    if isinstance(labels, (str, Path)):
        return read_class_list(labels)
    return list(labels)


def _lookup(index: ClassIndex, name: str, where: str) -> int:
    try:
        return index.index(name)
    except KeyError as error:
        raise SplitFormatError(f"{where}: {error.args[0]}") from None


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None


_EXTENSION_THEN_MORE = re.compile(
    r"(\.(?:" + "|".join(ext[1:] for ext in VIDEO_EXTENSIONS) + r"))([,;|:].*)$", re.IGNORECASE
)


def _check_path(rel: str, where: str, expected: str, line: str) -> None:
    """Refuse a listed path that runs on past its video extension (``v.avi,3``: a comma where the
    list has a space), which would otherwise be looked for as a file and reported missing."""
    match = _EXTENSION_THEN_MORE.search(rel)
    if match:
        raise SplitFormatError(
            f"{where}: expected {expected}, got {line.strip()!r}: the path goes on after "
            f"{match.group(1)!r} with {match.group(2)!r} (fields are separated by spaces)"
        )


def _class_source(labels: Union[PathLike, Sequence[str], None], default: str) -> str:
    """How to name a class list in messages."""
    if isinstance(labels, (str, Path)):
        return Path(labels).name
    return default


# -- BIKE / Text4Vis lists ---------------------------------------------------------------------------
def read_list(
    list_file: PathLike,
    labels: Union[PathLike, Sequence[str]],
    root: PathLike,
    *,
    name: Optional[str] = None,
) -> VideoSplit:
    """A BIKE/Text4Vis list: ``path label`` or ``path num_frames label`` per line.

    Args:
        list_file: the list.
        labels: the class list (file or names); labels in the list index it.
        root: folder the listed paths are relative to.
    """
    list_file, root = Path(list_file), Path(root)
    classes = _classes(labels, str(list_file))
    videos: List[Video] = []
    for number, line in enumerate(_read_lines(list_file), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=2)
        # The path may hold spaces: only the trailing integer fields are split off.
        expected = "'path label' or 'path num_frames label'"
        if len(parts) == 3 and _is_int(parts[1]) and _is_int(parts[2]):
            rel, label_text = parts[0], parts[2]
        elif len(parts) >= 2 and _is_int(parts[-1]):
            rel, label_text = line.rsplit(maxsplit=1)[0].strip(), parts[-1]
        else:
            _check_path(line.strip(), f"{list_file}:{number}", expected, line)
            raise SplitFormatError(f"{list_file}:{number}: expected {expected}, got {line!r}")
        _check_path(rel, f"{list_file}:{number}", expected, line)
        label = int(label_text)
        if not 0 <= label < len(classes):
            raise SplitFormatError(
                f"{list_file}:{number}: label {label} is outside the class list of {len(classes)} classes "
                f"({_class_source(labels, 'the class list')}; labels count from 0)"
            )
        videos.append(Video(root / rel, label))
    if not videos:
        raise SplitFormatError(f"{list_file}: no videos listed")
    return VideoSplit(name or list_file.stem, root, classes, videos, source=f"list {list_file}")


# -- UCF-101 official ----------------------------------------------------------------------------------
def read_ucf101(
    split_dir: PathLike,
    root: PathLike,
    *,
    split: int = 1,
    subset: str = "test",
    labels: Union[PathLike, Sequence[str], None] = None,
) -> VideoSplit:
    """UCF-101 official split files (``ucfTrainTestlist``).

    Args:
        split_dir: folder with ``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``; or one of
            the list files itself (then ``classInd.txt`` is taken from beside it unless ``labels``).
        root: the ``UCF-101`` folder holding ``<Class>/v_<Class>_gXX_cYY.avi``.
        split: 1, 2 or 3.
        subset: ``"train"`` or ``"test"``.
        labels: class list (default: ``classInd.txt``). Test lines are matched to it by folder name.
    """
    split_dir, root = Path(split_dir), Path(root)
    subset = _subset(subset)
    if split_dir.is_file():
        list_file, folder = split_dir, split_dir.parent
    else:
        list_file, folder = split_dir / f"{subset}list{split:02d}.txt", split_dir
    classes = _classes(labels if labels is not None else folder / "classInd.txt", str(list_file))
    index = ClassIndex(classes)
    videos: List[Video] = []
    for number, line in enumerate(_read_lines(list_file), start=1):
        if not line.strip():
            continue
        where = f"{list_file}:{number}"
        expected = "'Class/video.avi [label]'"
        parts = line.split()
        if parts:
            _check_path(parts[0], where, expected, line)
        if len(parts) not in (1, 2) or (len(parts) == 2 and not _is_int(parts[1])):
            raise SplitFormatError(f"{where}: expected {expected}, got {line!r}")
        rel = parts[0]
        if "/" not in rel:
            raise SplitFormatError(f"{where}: expected a 'Class/video.avi' path, got {rel!r}")
        folder_label = _lookup(index, rel.split("/")[0], where)
        if len(parts) == 2:
            label = int(parts[1]) - 1  # trainlist labels are 1-based, as classInd.txt
            source = _class_source(labels, "classInd.txt")
            if not 0 <= label < len(classes):
                raise SplitFormatError(
                    f"{where}: label {parts[1]} is outside the class list of {len(classes)} classes "
                    f"({source}; labels count from 1)"
                )
            if label != folder_label:
                raise SplitFormatError(
                    f"{where}: label {parts[1]} ({classes[label]}) disagrees with the folder {rel.split('/')[0]!r}"
                )
        videos.append(Video(root / rel, folder_label))
    if not videos:
        raise SplitFormatError(f"{list_file}: no videos listed")
    return VideoSplit(
        f"ucf101-{subset}{split}", root, classes, videos, source=f"UCF-101 official {list_file}",
        meta={"split": split, "subset": subset},
    )


def _subset(subset: str) -> str:
    subset = subset.lower()
    if subset in ("val", "validation"):
        subset = "test"
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    return subset


# -- HMDB-51 official ----------------------------------------------------------------------------------
_HMDB_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>\d+)\.txt$")


def read_hmdb51(
    split_dir: PathLike,
    root: PathLike,
    *,
    split: int = 1,
    subset: str = "test",
    labels: Union[PathLike, Sequence[str], None] = None,
) -> VideoSplit:
    """HMDB-51 official split files (``testTrainMulti_7030_splits``).

    Args:
        split_dir: folder with ``<class>_test_split<N>.txt`` (one per class and split).
        root: folder holding ``<class>/<video>.avi``.
        split: 1, 2 or 3.
        subset: ``"train"`` (lines marked 1) or ``"test"`` (marked 2); 0 marks unused videos.
        labels: class list fixing the order (default: the class names of the files, sorted, which
            is the usual HMDB-51 order).
    """
    split_dir, root = Path(split_dir), Path(root)
    subset = _subset(subset)
    wanted_mark = {"train": "1", "test": "2"}[subset]
    if not split_dir.is_dir():
        raise FileNotFoundError(f"HMDB-51 split folder not found: {split_dir}")
    files: Dict[str, Path] = {}
    for path in sorted(split_dir.iterdir()):
        match = _HMDB_FILE.match(path.name)
        if match and int(match.group("split")) == split:
            files[match.group("name")] = path
    if not files:
        raise SplitFormatError(f"{split_dir}: no '<class>_test_split{split}.txt' files")
    if labels is None:
        classes = sorted(files)
    else:
        classes = _classes(labels, str(split_dir))
    index = ClassIndex(classes)
    labelled = sorted((_lookup(index, folder_name, str(path)), folder_name, path) for folder_name, path in files.items())
    videos: List[Video] = []
    for label, folder_name, path in labelled:  # class order, then line order
        for number, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if parts:
                _check_path(parts[0], f"{path}:{number}", "'<video>.avi <0|1|2>'", line)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise SplitFormatError(f"{path}:{number}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] == wanted_mark:
                videos.append(Video(root / folder_name / parts[0], label))
    missing = [c for c, n in zip(classes, _count(videos, len(classes))) if n == 0]
    if missing:
        raise SplitFormatError(f"{split_dir}: no {subset} videos for classes {missing[:5]} (split {split})")
    return VideoSplit(
        f"hmdb51-{subset}{split}", root, classes, videos, source=f"HMDB-51 official {split_dir}",
        meta={"split": split, "subset": subset},
    )


def _count(videos: Sequence[Video], num_classes: int) -> List[int]:
    counts = [0] * num_classes
    for _, label in videos:
        counts[label] += 1
    return counts


# -- Kinetics CSV -----------------------------------------------------------------------------------------
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def kinetics_clip_name(youtube_id: str, start: int, end: int, suffix: str = ".mp4") -> str:
    """File name of a Kinetics clip as the official download scripts write it."""
    return f"{youtube_id}_{start:06d}_{end:06d}{suffix}"


def read_kinetics_csv(
    csv_file: PathLike,
    root: PathLike,
    *,
    labels: Union[PathLike, Sequence[str], None] = None,
    subset: Optional[str] = None,
    restrict: bool = False,
) -> VideoSplit:
    """A Kinetics annotation CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``).

    Args:
        csv_file: the CSV (with its header).
        root: folder with the clips, flat or in per-class folders.
        labels: class list fixing the order (default: the CSV's labels, sorted).
        subset: keep only rows whose ``split`` column equals this (e.g. ``"val"``).
        restrict: with ``labels``, keep only rows of those classes (e.g. the 160 zero-shot classes
            of a Kinetics-600 CSV) instead of rejecting the others as unknown.
    """
    csv_file, root = Path(csv_file), Path(root)
    lines = _read_lines(csv_file)
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in KINETICS_COLUMNS if c not in header]
    if missing:
        raise SplitFormatError(f"{csv_file}:1: header lacks columns {missing} (got {header})")
    col = {name: header.index(name) for name in header}
    rows = []
    for number, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < len(header):
            raise SplitFormatError(f"{csv_file}:{number}: expected {len(header)} columns, got {row}")
        if subset is not None and "split" in col and row[col["split"]].strip() != subset:
            continue
        try:
            start = int(float(row[col["time_start"]]))
            end = int(float(row[col["time_end"]]))
        except ValueError:
            raise SplitFormatError(f"{csv_file}:{number}: time_start/time_end are not numbers: {row}") from None
        rows.append((number, row[col["label"]].strip(), row[col["youtube_id"]].strip(), start, end))
    classes = _classes(labels, str(csv_file)) if labels is not None else sorted({r[1] for r in rows})
    index = ClassIndex(classes)
    videos: List[Video] = []
    for number, label_name, youtube_id, start, end in rows:
        if restrict and index.find(label_name) is None:
            continue
        label = _lookup(index, label_name, f"{csv_file}:{number}")
        videos.append(Video(root / kinetics_clip_name(youtube_id, start, end), label))
    if not videos:
        raise SplitFormatError(f"{csv_file}: no videos (subset={subset!r})")
    return VideoSplit(
        f"kinetics-{subset or csv_file.stem}", root, classes, videos, source=f"Kinetics CSV {csv_file}",
        meta={"subset": subset},
    )


# -- one entry point -------------------------------------------------------------------------------------
def build_split(
    format: str,
    lists: Union[PathLike, Sequence[PathLike]],
    root: PathLike,
    *,
    labels: Union[PathLike, Sequence[str], None] = None,
    split: int = 1,
    subset: Optional[str] = None,
    name: Optional[str] = None,
) -> VideoSplit:
    """Build a split from ``format`` (one of :data:`FORMATS`) and its list file(s).

    Args:
        format: ``"bike"``/``"text4vis"`` (``lists``: list files, ``labels``: class list),
            ``"ucf101"`` (``lists``: the ``ucfTrainTestlist`` folder or a list file),
            ``"hmdb51"`` (``lists``: the ``testTrainMulti_7030_splits`` folder),
            ``"kinetics"`` (``lists``: annotation CSV(s); ``subset``, when given, keeps the rows
            whose ``split`` column equals it).
        lists: one path or several; several lists of the same format are concatenated (same classes).
        root: the folder holding the videos.
        labels: class list (file or names), where the format needs or accepts one.
        split: official split number (UCF-101, HMDB-51).
        subset: ``"train"`` or ``"test"`` (UCF-101, HMDB-51; default ``"test"``), or a value of the
            Kinetics CSV ``split`` column (default: every row).
        name: the split's name in reports.
    """
    paths = [Path(lists)] if isinstance(lists, (str, Path)) else [Path(p) for p in lists]
    if not paths:
        raise ValueError("no list file given")
    fmt = format.lower()
    parts: List[VideoSplit] = []
    for path in paths:
        if fmt in ("bike", "text4vis"):
            if labels is None:
                raise ValueError("format 'bike' needs a class list (labels=..., the id,name CSV)")
            parts.append(read_list(path, labels, root))
        elif fmt == "ucf101":
            parts.append(read_ucf101(path, root, split=split, subset=subset or "test", labels=labels))
        elif fmt == "hmdb51":
            parts.append(read_hmdb51(path, root, split=split, subset=subset or "test", labels=labels))
        elif fmt == "kinetics":
            parts.append(read_kinetics_csv(path, root, labels=labels, subset=subset))
        else:
            raise ValueError(f"unknown split format {format!r}; expected one of {FORMATS}")
    result = parts[0]
    for other in parts[1:]:
        if [canonical_name(c) for c in other.classes] != [canonical_name(c) for c in result.classes]:
            raise SplitFormatError(f"{other.source}: its classes differ from those of {result.source}")
        result = VideoSplit(
            result.name, result.root, result.classes, result.videos + other.videos,
            source=f"{result.source} + {other.source}", meta=result.meta,
        )
    if name:
        result.name = name
    return result
