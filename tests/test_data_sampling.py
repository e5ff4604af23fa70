"""Frame sampling (SPEC section 3), checked against exact rational-arithmetic references."""

import math
import random
from collections import Counter
from fractions import Fraction

import pytest

from stzsar.data.sampling import clip_indices, middle_indices, random_indices


def reference_position(num_frames, num_segments, segment, fraction):
    """Frame under the point ``fraction`` of the way through ``segment`` (exact)."""
    point = (segment + Fraction(fraction)) * Fraction(num_frames, num_segments)
    return math.floor(point)


def reference_segment_frames(num_frames, num_segments, segment):
    """Frames whose start lies in ``[i*N/T, (i+1)*N/T)`` (exact)."""
    lo = Fraction(segment * num_frames, num_segments)
    hi = Fraction((segment + 1) * num_frames, num_segments)
    return [k for k in range(num_frames) if lo <= k < hi]


SIZES = [(n, t) for n in (1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 100, 301) for t in (1, 4, 8, 16)]


@pytest.mark.parametrize("num_frames,num_segments", SIZES)
def test_middle_indices_match_exact_segment_middles(num_frames, num_segments):
    expected = [reference_position(num_frames, num_segments, i, Fraction(1, 2)) for i in range(num_segments)]
    got = middle_indices(num_frames, num_segments)
    assert got == expected
    assert all(0 <= i < num_frames for i in got)
    assert got == sorted(got)
    if num_frames >= num_segments:
        assert len(set(got)) == num_segments  # one distinct frame per segment


@pytest.mark.parametrize("num_frames,num_segments", SIZES)
@pytest.mark.parametrize("num_clips", [2, 3, 4])
def test_multiview_clips_sit_at_even_fractions_of_each_segment(num_frames, num_segments, num_clips):
    clips = clip_indices(num_frames, num_segments, training=False, num_clips=num_clips)
    assert len(clips) == num_clips
    for j, clip in enumerate(clips):
        fraction = Fraction(2 * j + 1, 2 * num_clips)
        assert clip == [reference_position(num_frames, num_segments, i, fraction) for i in range(num_segments)]
    if num_frames >= num_segments * num_clips:
        flat = [i for clip in clips for i in clip]
        assert len(set(flat)) == len(flat)  # no frame shared between views


def test_one_clip_is_the_middle():
    assert clip_indices(50, 8, training=False, num_clips=1) == [middle_indices(50, 8)]


def test_short_videos_repeat_frames():
    # Worked by hand from floor((i + 1/2) * N / T): N=3, T=8 -> 0.19, 0.56, 0.94, 1.31, 1.69, 2.06, 2.44, 2.81.
    assert middle_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert middle_indices(1, 16) == [0] * 16
    assert random_indices(1, 8, random.Random(0)) == [0] * 8
    got = random_indices(3, 8, random.Random(0))
    assert sorted(set(got)) == [0, 1, 2] and got == sorted(got)


@pytest.mark.parametrize("num_frames,num_segments", SIZES)
def test_random_indices_stay_in_their_segment(num_frames, num_segments):
    rng = random.Random(1234)
    for _ in range(20):
        got = random_indices(num_frames, num_segments, rng)
        for i, index in enumerate(got):
            allowed = reference_segment_frames(num_frames, num_segments, i)
            if allowed:
                assert index in allowed
            else:  # no frame starts in the segment: the frame covering it
                assert index == math.floor(Fraction(i * num_frames, num_segments))
        if num_frames >= num_segments:
            assert len(set(got)) == num_segments


def test_random_indices_cover_each_segment_uniformly():
    rng = random.Random(7)
    draws = 4000
    counts = Counter()
    for _ in range(draws):
        counts.update(random_indices(20, 4, rng))
    # 5 frames a segment, each drawn with probability 1/5: expected 800, std ~25.
    assert set(counts) == set(range(20))
    assert all(abs(counts[k] - draws / 5) < 150 for k in range(20)), counts


def test_seeded_training_indices_repeat():
    a = random_indices(97, 8, random.Random("x"))
    b = random_indices(97, 8, random.Random("x"))
    c = random_indices(97, 8, random.Random("y"))
    assert a == b and a != c


def test_bad_arguments_say_what():
    with pytest.raises(ValueError, match="at least one frame"):
        middle_indices(0, 8)
    with pytest.raises(ValueError, match="num_segments"):
        random_indices(10, 0)
    with pytest.raises(ValueError, match="training samples one clip"):
        clip_indices(10, 4, training=True, num_clips=2)
    with pytest.raises(ValueError, match="clip must be"):
        middle_indices(10, 4, clip=2, num_clips=2)
