"""Frame geometry and normalisation, against hand-worked sizes, numpy float64 and PIL references."""

import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from stzsar.data.spec import CLIP_MEAN, CLIP_STD, ClipSpec
from stzsar.data.transforms import crop_windows, make_views, orient, random_crop_window, resized_shape


def coordinate_frames(num_frames, height, width):
    """uint8 [F, H, W, 3] frames whose pixels encode (x, y, frame)."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for f in range(num_frames):
        frames[f, ..., 0] = (xs * 3) % 256
        frames[f, ..., 1] = (ys * 5) % 256
        frames[f, ..., 2] = f * 9
    return frames


def normalized64(pixels):
    """float64 reference of (x / 255 - mean) / std over the channel axis 1 of [.., 3, H, W]."""
    mean = np.array(CLIP_MEAN, np.float64).reshape(3, 1, 1)
    std = np.array(CLIP_STD, np.float64).reshape(3, 1, 1)
    return (pixels.astype(np.float64) / 255.0 - mean) / std


def test_clip_constants_are_openai_clip_ones():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip not installed: nothing to compare the CLIP constants with")
    # Load only open_clip/constants.py: importing the package takes seconds.
    path = Path(list(spec.submodule_search_locations)[0]) / "constants.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_constants", path)
    constants = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(constants)
    assert CLIP_MEAN == tuple(constants.OPENAI_DATASET_MEAN)
    assert CLIP_STD == tuple(constants.OPENAI_DATASET_STD)


@pytest.mark.parametrize(
    "height,width,short",
    [(240, 320, 224), (320, 240, 224), (1080, 1920, 224), (47, 63, 32), (48, 64, 48), (100, 100, 64), (101, 203, 50)],
)
def test_resized_shape_keeps_the_aspect_ratio(height, width, short):
    def exact(side):  # round half up of side * short / min(height, width)
        value = Fraction(side * short, min(height, width))
        return int(value + Fraction(1, 2))

    got = resized_shape(height, width, short)
    assert min(got) == short
    assert got == (exact(height), exact(width))


def test_resized_shape_worked_examples():
    assert resized_shape(240, 320, 224) == (224, 299)  # 320 * 224 / 240 = 298.67
    assert resized_shape(1080, 1920, 224) == (224, 398)  # 398.2


def test_three_crops_span_the_long_side():
    # Landscape 224 x 299: left end, centre (75 // 2 = 37), right end.
    assert crop_windows(224, 299, 224, 3) == [(0, 0), (0, 37), (0, 75)]
    # Portrait: the same along the height.
    assert crop_windows(299, 224, 224, 3) == [(0, 0), (37, 0), (75, 0)]
    assert crop_windows(230, 300, 224, 1) == [(3, 38)]
    with pytest.raises(ValueError, match="does not fit"):
        crop_windows(100, 300, 224, 1)
    with pytest.raises(ValueError, match="1 or 3"):
        crop_windows(300, 300, 224, 5)


def test_multiview_views_are_the_right_crops_in_the_right_order():
    T, H, W, S = 4, 32, 50, 32
    frames = coordinate_frames(2 * T, H, W)
    spec = ClipSpec(num_frames=T, size=S, short_side=S, num_clips=2, num_crops=3)
    views = make_views(torch.from_numpy(frames), spec, training=False, num_clips=2)
    assert views.shape == (6, T, 3, S, S) and views.dtype == torch.float32
    lefts = [0, (W - S) // 2, W - S]
    for clip in range(2):
        for crop, left in enumerate(lefts):
            expected = frames[clip * T : (clip + 1) * T, :, left : left + S].transpose(0, 3, 1, 2)
            np.testing.assert_allclose(
                views[clip * 3 + crop].double().numpy(), normalized64(expected), atol=1e-5
            )


def test_training_crop_is_one_window_for_the_whole_clip():
    T, H, W, S = 5, 40, 60, 32
    frames = coordinate_frames(T, H, W)
    spec = ClipSpec(num_frames=T, size=S, short_side=H)
    rng = random.Random(3)
    view = make_views(torch.from_numpy(frames), spec, training=True, rng=rng)[0]
    top, left = random_crop_window(H, W, S, random.Random(3))
    expected = frames[:, top : top + S, left : left + S].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(view.double().numpy(), normalized64(expected), atol=1e-5)


def test_random_crop_windows_cover_every_position():
    rng = random.Random(0)
    seen = {random_crop_window(34, 35, 32, rng) for _ in range(500)}
    assert seen == {(t, l) for t in range(3) for l in range(4)}


def test_hflip_mirrors_the_clip():
    T, H, W, S = 2, 32, 32, 32
    frames = coordinate_frames(T, H, W)
    flipped = make_views(torch.from_numpy(frames), ClipSpec(num_frames=T, size=S, short_side=S, hflip=1.0),
                         training=True, rng=random.Random(0))[0]
    expected = frames[:, :, ::-1].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(flipped.double().numpy(), normalized64(expected), atol=1e-5)


def test_resize_matches_pil_bilinear():
    from PIL import Image

    rng = np.random.default_rng(0)
    # A smooth image (a low-resolution noise upsampled) so that both filters see the same signal.
    small = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((160, 120), Image.BICUBIC))
    spec = ClipSpec(num_frames=1, size=48, short_side=48)
    view = make_views(torch.from_numpy(image[None].copy()), spec, training=False)[0, 0]
    pixels = (view.double().numpy() * np.array(CLIP_STD).reshape(3, 1, 1)
              + np.array(CLIP_MEAN).reshape(3, 1, 1)) * 255.0
    reference = np.asarray(Image.fromarray(image).resize((64, 48), Image.BILINEAR), np.float64)
    reference = reference[:, 8:56].transpose(2, 0, 1)  # centre crop 48 of 64
    diff = np.abs(pixels - reference)
    # PIL works in uint8 with its own fixed-point rounding: agree to about one grey level.
    assert diff.mean() < 1.0 and diff.max() < 6, (diff.mean(), diff.max())


@pytest.mark.parametrize("rotation,k", [(0, 0), (90, 1), (-90, -1), (180, 2), (-180, 2), (270, 3)])
def test_orient_turns_counter_clockwise(rotation, k):
    frames = coordinate_frames(2, 6, 10)
    got = orient(torch.from_numpy(frames), rotation).numpy()
    np.testing.assert_array_equal(got, np.rot90(frames, k, axes=(1, 2)))


def test_orient_rejects_odd_angles():
    with pytest.raises(ValueError, match="multiples of 90"):
        orient(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), 45)


def test_output_shapes_and_spec_checks():
    spec = ClipSpec(num_frames=8, size=224, num_clips=4, num_crops=3)
    assert spec.output_shape(training=False) == (12, 8, 3, 224, 224)
    assert ClipSpec(num_frames=8).output_shape(training=False) == (8, 3, 224, 224)
    assert ClipSpec().resize_to(training=True) == 256 and ClipSpec().resize_to(training=False) == 224
    with pytest.raises(ValueError, match="testing"):
        spec.check_training()
    with pytest.raises(ValueError, match="short_side"):
        ClipSpec(size=224, short_side=200)
    with pytest.raises(ValueError, match="num_crops"):
        ClipSpec(num_crops=2)
    with pytest.raises(ValueError, match=r"expected 1 x 8 frames"):
        make_views(torch.zeros(4, 32, 32, 3, dtype=torch.uint8), ClipSpec(num_frames=8, size=32), training=False)
