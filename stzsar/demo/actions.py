"""A synthetic action dataset in which the evidence is small in space and short in time.

Every class is a (colour, motion) pair, e.g. a red ball sliding to the right. Classes carry
invented one-word names (``"vorpel"``) that say nothing about what the video shows, much like
many real action names ("salsa spin", "zumba") mean little to a model that has not seen them.
What a class looks like is in its *description* ("A small red ball slides to the right ..."),
from which the offline attribute extractor draws the keywords the prompts use.

Seen and unseen classes: the unseen (zero-shot) classes are new combinations of colours and
motions that the seen classes show separately, so every word an unseen class's attributes use
("red", "right", ...) also appears in the attributes of seen classes. Only the attributes can
carry that knowledge over: without them, an unseen class's prompt is its unknown name alone.

Where and when the action is (what the STI module is for, docs/method.md section 4):

- in space: the actor is small (a ball of radius ~3.5 px, a thin bar, in a 36 px frame of 4x4
  patches of 8 px after the crop) among 2-3 distractor objects of other colours and other shapes
  (squares, triangles, crosses), over a cluttered background (low-contrast blobs, noise). The
  distractor colours are the other class colours and three that no class uses, so the colours
  in a frame do not tell the class: the colour that counts is the one of the ball or bar;
- in time: the action fills a window of 4-6 of the video's 16 frames (at a random place); the
  other frames show, per video, the distractors drifting, a static scene, or the background
  alone. A clip of 8 frames sampled uniformly holds 2-3 frames of the action.

A moving ball leaves a fading trail behind it (which side tells the direction), a growing ball a
faint halo of its next size, a spinning bar a ghost of its previous angle, so that a frame of the
window shows the motion.

The frames are drawn with NumPy and encoded with PyAV (H.264 by default); each video has its own
random positions, window, sizes, distractors, background and noise, drawn from ``(seed, class,
video)`` so the dataset is the same for a seed on any machine.
"""

from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

#: Colour name -> RGB.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 200, 60),
    "blue": (45, 90, 240),
    "yellow": (240, 220, 30),
}

#: Motion name -> description template ({c}: colour word).
MOTIONS: Dict[str, str] = {
    "moving right": "A {c} ball slides right across the frame, a fading {c} trail behind it. "
                    "The {c} ball keeps sliding right, heading rightward.",
    "moving up": "A {c} ball rises upward through the frame, a fading {c} trail below it. "
                 "The {c} ball keeps rising toward the top.",
    "orbiting": "A {c} ball circles around the centre of the frame, a fading {c} trail behind it. "
                "The {c} ball keeps orbiting in a round loop.",
    "growing": "A {c} ball in the middle of the frame grows bigger and bigger. "
               "The {c} ball keeps growing, swelling into a large {c} disc.",
    "spinning": "A {c} bar spins around the centre of the frame like a propeller. "
                "The {c} bar keeps spinning, its {c} blades turning in a circle.",
    "blinking": "A {c} ball flashes on and off in one spot. "
                "The {c} ball keeps blinking, appearing and vanishing like a warning light.",
}

# Syllables of the invented class names (chosen so that names read as words and differ).
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("l", "n", "r", "sk", "nd", "mp", "x")


@dataclass(frozen=True)
class ActionClass:
    """One synthetic action class."""

    name: str  # the invented class name used in prompts
    colour: str
    motion: str
    description: str
    unseen: bool


def invented_names(count: int, seed: int) -> List[str]:
    """``count`` distinct pronounceable made-up words (CVCVC), reproducible for a seed."""
    rng = random.Random(f"names:{seed}")
    names: List[str] = []
    while len(names) < count:
        word = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS) + rng.choice(_VOWELS)
                + rng.choice(_CODAS))
        if word not in names:
            names.append(word)
    return names


def make_classes(
    colours: Sequence[str] = tuple(COLOURS),
    motions: Sequence[str] = tuple(MOTIONS),
    seed: int = 0,
) -> List[ActionClass]:
    """Every (colour, motion) class; unseen ones form a diagonal so each motion has one unseen
    colour and every colour and motion also appears among the seen classes.

    Unseen: motion ``m`` with colour ``(m + seed) % len(colours)``.
    """
    for colour in colours:
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; known: {', '.join(COLOURS)}")
    for motion in motions:
        if motion not in MOTIONS:
            raise ValueError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
    if len(colours) < 2 or len(motions) < 2:
        raise ValueError("need at least 2 colours and 2 motions, so that unseen classes recombine seen words")
    names = invented_names(len(colours) * len(motions), seed)
    classes = []
    for m, motion in enumerate(motions):
        for c, colour in enumerate(colours):
            unseen = c == (m + seed) % len(colours)
            classes.append(ActionClass(
                name=names[len(classes)], colour=colour, motion=motion,
                description=MOTIONS[motion].format(c=colour), unseen=unseen,
            ))
    return classes


# --------------------------------------------------------------------------------------------
# Drawing


@functools.lru_cache(maxsize=8)
def _pixel_centres(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return ys + 0.5, xs + 0.5


def _disc(canvas: np.ndarray, cx: float, cy: float, radius: float, colour: np.ndarray, alpha: float) -> None:
    """Alpha-blend an anti-aliased disc (coverage from the distance to the edge)."""
    ys, xs = _pixel_centres(*canvas.shape[:2])
    dist = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
    cover = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None] * alpha
    canvas[:] = canvas * (1 - cover) + colour * cover


def _bar(canvas: np.ndarray, cx: float, cy: float, length: float, thickness: float, angle: float,
         colour: np.ndarray, alpha: float) -> None:
    """Alpha-blend an anti-aliased bar centred at (cx, cy) at ``angle`` radians."""
    ys, xs = _pixel_centres(*canvas.shape[:2])
    dx, dy = xs - cx, ys - cy
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    cover = (np.clip(length / 2 + 0.5 - np.abs(along), 0, 1) * np.clip(thickness / 2 + 0.5 - np.abs(across), 0, 1))
    cover = cover[..., None] * alpha
    canvas[:] = canvas * (1 - cover) + colour * cover


#: (opacity, radius factor) of the trail's ghosts, nearest first.
_TRAIL = ((0.6, 0.85), (0.4, 0.7), (0.25, 0.55), (0.12, 0.4))

#: Colours no class uses, for distractors only.
DISTRACTOR_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "orange": (245, 140, 20),
    "purple": (150, 60, 210),
    "cyan": (40, 215, 220),
}

#: Distractor shapes (the actors are balls and bars).
DISTRACTOR_SHAPES = ("square", "triangle", "cross")

#: What the frames outside the action window show.
OFF_WINDOW = ("distractors", "static", "nothing")

#: Frames of the action window, at most and at least (of ``num_frames`` = 16).
WINDOW = (4, 6)


def _square(canvas: np.ndarray, cx: float, cy: float, half: float, colour: np.ndarray) -> None:
    ys, xs = _pixel_centres(*canvas.shape[:2])
    cover = (np.clip(half + 0.5 - np.abs(xs - cx), 0, 1) * np.clip(half + 0.5 - np.abs(ys - cy), 0, 1))[..., None]
    canvas[:] = canvas * (1 - cover) + colour * cover


def _triangle(canvas: np.ndarray, cx: float, cy: float, half: float, colour: np.ndarray) -> None:
    """An upward triangle in the box of side ``2 * half`` around (cx, cy)."""
    ys, xs = _pixel_centres(*canvas.shape[:2])
    depth = (ys - (cy - half)) / (2 * half)  # 0 at the apex, 1 at the base
    inside = (depth >= 0) & (depth <= 1) & (np.abs(xs - cx) <= depth * half)
    cover = inside.astype(np.float64)[..., None]
    canvas[:] = canvas * (1 - cover) + colour * cover


def _cross(canvas: np.ndarray, cx: float, cy: float, half: float, colour: np.ndarray) -> None:
    thick = max(2.0, 0.7 * half)
    _bar(canvas, cx, cy, 2 * half, thick, 0.0, colour, 1.0)
    _bar(canvas, cx, cy, 2 * half, thick, math.pi / 2, colour, 1.0)


_SHAPES = {"square": _square, "triangle": _triangle, "cross": _cross}


def _background(size: int, rng: random.Random, noise_rng: np.random.Generator) -> np.ndarray:
    """A shade with a tint, low-contrast blobs and stripes (clutter), per video."""
    shade = rng.uniform(25, 70)
    tint = np.array([rng.uniform(-12, 12) for _ in range(3)])
    canvas = np.empty((size, size, 3), dtype=np.float64)
    canvas[:] = np.clip(shade + tint, 0, 255)
    for _ in range(rng.randint(4, 7)):
        tone = canvas[0, 0] + np.array([rng.uniform(-18, 18)] * 3) + np.array([rng.uniform(-6, 6) for _ in range(3)])
        if rng.random() < 0.5:
            _disc(canvas, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 7), tone, 0.8)
        else:
            _bar(canvas, rng.uniform(0, size), rng.uniform(0, size), rng.uniform(8, 30), rng.uniform(1, 3),
                 rng.uniform(0, math.pi), tone, 0.8)
    canvas += noise_rng.normal(0, 3, size=canvas.shape)  # fixed texture of the scene
    return canvas


def render_video(colour: str, motion: str, num_frames: int = 16, size: int = 36,
                 rng: Optional[random.Random] = None, return_window: bool = False):
    """The frames of one video, ``uint8 [num_frames, size, size, 3]`` (RGB); with
    ``return_window`` also the action window ``(first frame, number of frames)``.

    The actor (``colour``, ``motion``) is drawn only in the action window (see the module
    docstring); distractors and clutter are drawn as the video's off-window mode says.
    """
    rng = rng or random.Random(0)
    rgb = np.array(COLOURS[colour], dtype=np.float64)
    noise_rng = np.random.default_rng(rng.randrange(2**32))
    background = _background(size, rng, noise_rng)

    # The action window.
    length = min(num_frames, rng.randint(*WINDOW) if num_frames >= WINDOW[1] else max(1, num_frames // 3))
    first = rng.randint(0, num_frames - length)
    off_mode = rng.choice(OFF_WINDOW)

    # The actor: small, somewhere in the frame.
    radius = rng.uniform(0.085, 0.11) * size
    margin = radius + 1
    travel = rng.uniform(0.45, 0.6) * size  # the path of a sliding or rising ball
    start = rng.uniform(margin, size - margin - travel)
    cross = rng.uniform(margin, size - margin)
    spin_dir = rng.choice((-1, 1))
    turns = rng.uniform(0.6, 0.9)  # half-turns over the window
    angle0 = rng.uniform(0, math.pi)
    orbit = rng.uniform(0.14, 0.18) * size
    centre = (rng.uniform(orbit + margin, size - orbit - margin), rng.uniform(orbit + margin, size - orbit - margin))
    phase = rng.randrange(3)

    # Distractors: other colours, other shapes, each drifting slowly (or frozen).
    palette = [c for c in list(COLOURS) + list(DISTRACTOR_COLOURS) if c != colour]
    distractors = []
    for _ in range(rng.randint(2, 3)):
        name = rng.choice(palette)
        palette.remove(name)
        tone = np.array({**COLOURS, **DISTRACTOR_COLOURS}[name], dtype=np.float64)
        distractors.append((
            _SHAPES[rng.choice(DISTRACTOR_SHAPES)], tone, rng.uniform(2.5, 3.5),
            rng.uniform(4, size - 4), rng.uniform(4, size - 4),
            rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4),
        ))

    def lerp(a, b, p):
        return a + (b - a) * p

    def position(p: float, back: float = 0.0) -> Tuple[float, float]:
        """Where the ball is at progress ``p``, or ``back`` pixels behind it along its path."""
        if motion == "orbiting":
            angle = angle0 + spin_dir * (2 * math.pi * turns * p - back / orbit)
            return centre[0] + orbit * math.cos(angle), centre[1] + orbit * math.sin(angle)
        along = start + travel * p - back
        if motion == "moving right":
            return along, cross
        if motion == "moving up":
            return cross, size - along
        return centre

    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        canvas = background + noise_rng.normal(0, 3, size=background.shape)
        in_window = first <= t < first + length
        if in_window or off_mode != "nothing":
            moved = t if (in_window or off_mode == "distractors") else first
            for draw, tone, half, x, y, dx, dy in distractors:
                draw(canvas, float(np.clip(x + dx * moved, 3, size - 3)), float(np.clip(y + dy * moved, 3, size - 3)),
                     half, tone)
        if in_window:
            p = (t - first) / max(1, length - 1)
            if motion in ("moving right", "moving up", "orbiting"):
                # A comet: fading, shrinking ghosts behind the ball show where it came from.
                for back, (alpha, scale) in reversed(list(enumerate(_TRAIL, start=1))):
                    _disc(canvas, *position(p, back * 0.5 * radius), radius * scale, rgb, alpha)
                _disc(canvas, *position(p), radius, rgb, 1.0)
            elif motion == "growing":
                r = lerp(0.05 * size, 0.2 * size, p)
                _disc(canvas, centre[0], centre[1], r * 1.3, rgb, 0.3)  # halo of the size to come
                _disc(canvas, centre[0], centre[1], r, rgb, 1.0)
            elif motion == "spinning":
                angle = angle0 + spin_dir * math.pi * turns * p
                bar_length, thickness = 0.36 * size, max(2.0, 0.07 * size)
                for back, alpha in ((2, 0.2), (1, 0.45)):
                    _bar(canvas, centre[0], centre[1], bar_length, thickness,
                         angle - spin_dir * back * 0.3, rgb, alpha)
                _bar(canvas, centre[0], centre[1], bar_length, thickness, angle, rgb, 1.0)
            elif motion == "blinking":
                # On for two frames, off for one (a clip sampling every other frame still sees
                # it lit); lit frames glow.
                if (t - first + phase) % 3 != 2:
                    _disc(canvas, centre[0], centre[1], radius * 1.6, rgb, 0.3)
                    _disc(canvas, centre[0], centre[1], radius, rgb, 1.0)
            else:  # pragma: no cover - make_classes rejects unknown motions
                raise ValueError(f"unknown motion {motion!r}")
        frames[t] = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return (frames, (first, length)) if return_window else frames


def encode_video(path: PathLike, frames: np.ndarray, fps: int = 8, codec: str = "libx264") -> Path:
    """Encode ``uint8 [T, H, W, 3]`` RGB frames with PyAV (H.264, near-lossless, even sizes)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 with 4:2:0 chroma needs even frame sizes, got {width}x{height}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            # Single-threaded and fixed settings: identical bytes on every run of a seed.
            stream.options = {"preset": "ultrafast", "crf": "12", "threads": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------------------------
# The dataset on disk


@dataclass
class SyntheticDataset:
    """Paths of a generated dataset (see :func:`generate_dataset`)."""

    root: Path
    classes: List[ActionClass]
    seen: List[str]
    unseen: List[str]
    train_list: Path
    seen_test_list: Path
    unseen_test_list: Path
    seen_labels: Path
    unseen_labels: Path
    descriptions: Path
    example_video: Path
    counts: Dict[str, int]
    windows: Path  # {video path: [first frame, frames]} of the action


def _write_labels(path: Path, names: Sequence[str]) -> None:
    path.write_text("id,name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(names)))


def generate_dataset(
    out: PathLike,
    *,
    train_per_class: int = 16,
    test_per_class: int = 6,
    unseen_per_class: Optional[int] = None,
    num_frames: int = 16,
    size: int = 36,
    colours: Sequence[str] = tuple(COLOURS),
    motions: Sequence[str] = tuple(MOTIONS),
    seed: int = 0,
    progress: bool = True,
) -> SyntheticDataset:
    """Write the videos, BIKE-style lists (``path label``) and ``id,name`` class lists under ``out``.

    Layout::

        out/videos/<class>/<class>_<n>.mp4
        out/train.txt            seen classes, ``train_per_class`` videos each (labels: seen_labels.csv)
        out/seen_test.txt        other videos of the seen classes, ``test_per_class`` each
        out/unseen_test.txt      videos of the unseen classes, ``unseen_per_class`` each
                                 (default ``test_per_class``; labels: unseen_labels.csv)
        out/descriptions.json    {class: description}
        out/classes.json         every class with its colour, motion and split
        out/windows.json         {video: [first frame, number of frames]} of the action window
    """
    from tqdm.auto import tqdm

    out = Path(out)
    classes = make_classes(colours, motions, seed)
    seen = [c for c in classes if not c.unseen]
    unseen = [c for c in classes if c.unseen]
    jobs: List[Tuple[ActionClass, int]] = []
    for cls in seen:
        jobs += [(cls, n) for n in range(train_per_class + test_per_class)]
    for cls in unseen:
        jobs += [(cls, n) for n in range(test_per_class if unseen_per_class is None else unseen_per_class)]
    lists: Dict[str, List[str]] = {"train": [], "seen_test": [], "unseen_test": []}
    seen_index = {c.name: i for i, c in enumerate(seen)}
    unseen_index = {c.name: i for i, c in enumerate(unseen)}
    example = None
    windows: Dict[str, List[int]] = {}
    for cls, n in tqdm(jobs, desc="synthetic videos", unit="video", disable=not progress, leave=False):
        rel = f"videos/{cls.name}/{cls.name}_{n:03d}.mp4"
        frames, window = render_video(cls.colour, cls.motion, num_frames, size,
                                      random.Random(f"video:{seed}:{cls.name}:{n}"), return_window=True)
        encode_video(out / rel, frames)
        windows[rel] = list(window)
        if cls.unseen:
            lists["unseen_test"].append(f"{rel} {unseen_index[cls.name]}")
            example = example or out / rel
        elif n < train_per_class:
            lists["train"].append(f"{rel} {seen_index[cls.name]}")
        else:
            lists["seen_test"].append(f"{rel} {seen_index[cls.name]}")
    for name, lines in lists.items():
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
    _write_labels(out / "seen_labels.csv", [c.name for c in seen])
    _write_labels(out / "unseen_labels.csv", [c.name for c in unseen])
    (out / "descriptions.json").write_text(json.dumps({c.name: c.description for c in classes}, indent=1) + "\n")
    (out / "classes.json").write_text(json.dumps([asdict(c) for c in classes], indent=1) + "\n")
    (out / "windows.json").write_text(json.dumps(windows) + "\n")
    return SyntheticDataset(
        root=out, classes=classes, seen=[c.name for c in seen], unseen=[c.name for c in unseen],
        train_list=out / "train.txt", seen_test_list=out / "seen_test.txt",
        unseen_test_list=out / "unseen_test.txt", seen_labels=out / "seen_labels.csv",
        unseen_labels=out / "unseen_labels.csv", descriptions=out / "descriptions.json",
        example_video=example, counts={k: len(v) for k, v in lists.items()}, windows=out / "windows.json",
    )
