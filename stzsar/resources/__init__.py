"""Built-in class lists and attribute files of the benchmark datasets, shipped as package data.

Every name below stands for a class list (``classes/<name>.csv``, ``id,name``, ``id`` 0-based:
the class index is the row) and its attribute file (``attributes/<name>.json``, made by
``stzsar attributes`` with the offline extractor from the ER-ZSAR descriptions). Wherever a class
list or an attribute file is accepted (``--labels``, ``--classes``, ``--attributes``, the config's
``data.labels`` / ``data.attributes``, :func:`stzsar.classes.read_class_list`,
:func:`stzsar.attributes.load_attributes`), a name works as well as a path; a path that exists
always wins over a name.

>>> from stzsar.resources import get
>>> get("k600-split1").size
160
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Union

PathLike = Union[str, Path]

_HERE = Path(__file__).resolve().parent
BIKE_LISTS = "whwu95/BIKE lists/ at e8f6a8b"
ER_ZSAR = "DeLightCMU/ElaborativeRehearsal datasets/ at e3130fd"


@dataclass(frozen=True)
class ClassListResource:
    """One built-in class list: where it comes from, how it is indexed, which descriptions it uses."""

    name: str
    title: str
    size: int
    origin: str
    descriptions: str  # key of stzsar.resources.descriptions.DESCRIPTION_FILES
    note: str = ""

    @property
    def classes_path(self) -> Path:
        return _HERE / "classes" / f"{self.name}.csv"

    @property
    def attributes_path(self) -> Path:
        return _HERE / "attributes" / f"{self.name}.json"

    @property
    def index(self) -> str:
        return "0-based: class index = row of classes/%s.csv (its id column)" % self.name


_KINETICS_SPLIT_NOTE = (
    "ER-ZSAR's Kinetics-600 zero-shot test split {n}: 160 of the 220 classes that Kinetics-600 adds "
    "to Kinetics-400, in the order of the split's index list; the labels of BIKE's "
    "test_split{n} lists index it"
)

RESOURCES: Dict[str, ClassListResource] = {
    r.name: r
    for r in (
        ClassListResource(
            "ucf101", "UCF-101", 101, f"{BIKE_LISTS}: ucf101/ucf_labels.csv", "ucf101",
            "alphabetical ignoring case, the order of the official classInd.txt (which is 1-based: subtract 1)",
        ),
        ClassListResource(
            "hmdb51", "HMDB-51", 51, f"{BIKE_LISTS}: hmdb51/hmdb51_labels.csv", "hmdb51",
            "alphabetical",
        ),
        ClassListResource(
            "k400", "Kinetics-400", 400, f"{BIKE_LISTS}: k400/kinetics_400_labels.csv", "kinetics620",
            "alphabetical; identical to indices 0-399 of ER-ZSAR's 620-class list",
        ),
        ClassListResource(
            "k600-added", "Kinetics-600, the 220 classes it adds to Kinetics-400", 220,
            f"{ER_ZSAR}: Kinetics/zsl220/classes620_label_defn.json, classes 400-619", "kinetics620",
            "row i is index 400 + i of ER-ZSAR's 620-class list; 217 of them are in the three zero-shot splits",
        ),
        *(
            ClassListResource(
                f"k600-split{n}", f"Kinetics-600 zero-shot test split {n}", 160,
                f"{BIKE_LISTS}: k600/k160_labels_split{n}.csv (= {ER_ZSAR}: Kinetics/zsl220/tst_class_idxs.json[{n - 1}])",
                "kinetics620", _KINETICS_SPLIT_NOTE.format(n=n),
            )
            for n in (1, 2, 3)
        ),
    )
}


class UnknownResourceError(KeyError):
    """A name that is neither an existing file nor a built-in name; the message lists the names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def names() -> List[str]:
    return list(RESOURCES)


def get(name: str) -> ClassListResource:
    """The built-in list ``name`` (case-insensitive); unknown names raise with the known ones."""
    try:
        return RESOURCES[name.strip().lower()]
    except KeyError:
        raise UnknownResourceError(f"unknown built-in name {name!r}; known: {', '.join(RESOURCES)}") from None


def _resolve(value: PathLike, what: str, attribute: str) -> Path:
    path = Path(value)
    if path.exists():
        return path  # an existing path always wins over a name
    key = str(value).strip().lower()
    if key in RESOURCES:
        return getattr(RESOURCES[key], attribute)
    raise FileNotFoundError(
        f"{what} not found: {str(value)!r} is neither a file nor a built-in name ({', '.join(RESOURCES)})"
    )


def resolve_class_list(value: PathLike) -> Path:
    """The file behind a class-list argument: the path itself when it exists, else a built-in list."""
    return _resolve(value, "class list", "classes_path")


def resolve_attributes(value: PathLike) -> Path:
    """The file behind an attribute-file argument: the path itself when it exists, else a built-in file."""
    return _resolve(value, "attribute file", "attributes_path")
