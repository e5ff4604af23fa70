"""The Python inference API: ``stzsar.video_input`` against an independent decode, resize and
normalisation; the model's input check; the public names of the package."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import stzsar
from stzsar.model import build_model

SIZE = 32  # stzsar-tiny's image size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("stzsar-tiny", pretrained=None).eval()


def write_video(path, count=21, height=48, width=72):
    """A short H.264 file of smooth, distinct frames (colour gradients that move)."""
    import av

    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(count):
            frame = np.stack([(x * 3 + k * 9) % 256, (y * 5 + k * 4) % 256, ((x + y) * 2 + k * 7) % 256], -1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def pyav_frames(path):
    """Every frame as PyAV alone decodes it, in order: uint8 [N, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def reference_clip(frames, num_frames, mean, std, clip=0, num_clips=1, crop_left=None):
    """The clip by the written rules, in float64: frame floor((i + (clip + 1/2) / num_clips) * N / T)
    of each of T segments; short side to SIZE with PIL's (antialiased) bilinear filter on float
    pixels; centre SIZE x SIZE crop; /255, minus mean, over std."""
    from PIL import Image

    count, height, width = frames.shape[:3]
    picks = [math.floor((i + (clip + 0.5) / num_clips) * count / num_frames) for i in range(num_frames)]
    scale = SIZE / min(height, width)
    out_h, out_w = round(height * scale), round(width * scale)
    top = (out_h - SIZE) // 2
    left = (out_w - SIZE) // 2 if crop_left is None else crop_left
    out = np.empty((num_frames, 3, SIZE, SIZE))
    for t, k in enumerate(picks):
        for c in range(3):
            channel = Image.fromarray(frames[k, :, :, c].astype(np.float32), mode="F")
            resized = np.asarray(channel.resize((out_w, out_h), Image.BILINEAR), dtype=np.float64)
            out[t, c] = (resized[top:top + SIZE, left:left + SIZE] / 255.0 - mean[c]) / std[c]
    return torch.from_numpy(out)


def test_video_file_equals_pyav_decode_resized_and_normalised_by_hand(tmp_path, model):
    path = write_video(tmp_path / "clip.mp4")
    frames = pyav_frames(path)
    video = stzsar.video_input(str(path), model, num_frames=8)
    assert video.shape == (1, 8, 3, SIZE, SIZE) and video.dtype == torch.float32
    expected = reference_clip(frames, 8, model.image_mean, model.image_std)
    # PIL and torch both filter with a support-scaled triangle; they differ by float32 rounding only.
    torch.testing.assert_close(video[0].double(), expected, atol=1e-4, rtol=0)
    # A wrong frame, offset or channel would be far off: the frames differ by whole gradients.
    wrong = reference_clip(frames[::-1].copy(), 8, model.image_mean, model.image_std)
    assert (video[0].double() - wrong).abs().max() > 0.1


def test_views_follow_the_test_view_rules(tmp_path, model):
    path = write_video(tmp_path / "clip.mp4")
    frames = pyav_frames(path)
    video = stzsar.video_input(path, model, num_frames=4, num_clips=2, num_crops=3)
    assert video.shape == (6, 4, 3, SIZE, SIZE)
    long_side = round(72 * SIZE / 48)
    for clip in range(2):
        for crop, left in enumerate([0, (long_side - SIZE) // 2, long_side - SIZE]):
            expected = reference_clip(frames, 4, model.image_mean, model.image_std, clip, 2, crop_left=left)
            torch.testing.assert_close(video[clip * 3 + crop].double(), expected, atol=1e-4, rtol=0)


def test_frames_in_memory_give_the_same_input_as_the_file(tmp_path, model):
    from PIL import Image

    path = write_video(tmp_path / "clip.mp4")
    frames = pyav_frames(path)
    from_file = stzsar.video_input(path, model, num_frames=8)
    for source in (frames, torch.from_numpy(frames), [Image.fromarray(f) for f in frames], list(frames)):
        torch.testing.assert_close(stzsar.video_input(source, model, num_frames=8), from_file, rtol=0, atol=0)


def test_the_model_normalisation_is_used(tmp_path, model, monkeypatch):
    """Weights recorded with another normalisation (e.g. SigLIP's 0.5) get inputs normalised with it."""
    frames = pyav_frames(write_video(tmp_path / "clip.mp4"))
    monkeypatch.setattr(model.video.visual, "image_mean", (0.5, 0.5, 0.5), raising=False)
    monkeypatch.setattr(model.video.visual, "image_std", (0.25, 0.5, 0.125), raising=False)
    assert model.image_mean == (0.5, 0.5, 0.5)
    video = stzsar.video_input(frames, model, num_frames=8)
    expected = reference_clip(frames, 8, (0.5, 0.5, 0.5), (0.25, 0.5, 0.125))
    torch.testing.assert_close(video[0].double(), expected, atol=1e-4, rtol=0)


def test_input_scores_like_predict(tmp_path, model):
    """The helper's input gives the probabilities `stzsar predict` gives for the same file."""
    from stzsar.eval.loading import clip_spec
    from stzsar.eval.predict import predict_videos

    path = write_video(tmp_path / "clip.mp4")
    names = ["archery", "juggling balls", "salsa spin"]
    bank = model.encode_classes(names)
    with torch.no_grad():
        probs = model(stzsar.video_input(path, model, num_frames=8), bank).softmax(-1)[0]
    [answer] = predict_videos(model, [path], bank, names, clip_spec(model, 8), top_k=3, precision="fp32")
    for name, prob in answer.top:
        assert probs[names.index(name)].item() == pytest.approx(prob, abs=1e-5)


@pytest.mark.parametrize("source, error, words", [
    (np.zeros((5, 40, 40, 3), dtype=np.float32), TypeError, "uint8"),
    (np.zeros((5, 3, 40, 40), dtype=np.uint8), ValueError, "[N, H, W, 3]"),
    ([np.zeros((40, 40, 3), np.uint8), np.zeros((40, 48, 3), np.uint8)], ValueError, "differ in size"),
    ([], ValueError, "empty"),
    (12, TypeError, "a video file path"),
])
def test_bad_frames_in_memory_say_what_is_accepted(model, source, error, words):
    with pytest.raises(error) as info:
        stzsar.video_input(source, model)
    assert words in str(info.value)


def test_unreadable_file_names_the_path(tmp_path, model):
    from stzsar.data.errors import VideoDecodeError

    path = tmp_path / "missing.mp4"
    with pytest.raises(VideoDecodeError) as info:
        stzsar.video_input(path, model)
    assert "missing.mp4" in str(info.value)


@pytest.mark.parametrize("shape, hint", [
    ((2, 8, 3, 224, 224), "frames of 224x224; this model takes 32x32"),
    ((8, 3, SIZE, SIZE), "add the batch dimension"),
    ((1, 8, SIZE, SIZE, 3), "channels last"),
    ((1, 0, 3, SIZE, SIZE), "[B, T, 3, 32, 32]"),
])
def test_wrong_input_shape_is_a_clear_error(model, shape, hint):
    bank = model.encode_classes(["archery", "juggling balls"])
    with pytest.raises(ValueError) as info:
        model(torch.randn(shape), bank)
    message = str(info.value)
    assert "[B, T, 3, 32, 32]" in message and hint in message and "video_input" in message


def test_pixels_instead_of_normalised_input_is_a_clear_error(model):
    bank = model.encode_classes(["archery"])
    with pytest.raises(TypeError, match="floating point.*video_input"):
        model(torch.zeros(1, 8, 3, SIZE, SIZE, dtype=torch.uint8), bank)


def test_public_names_are_listed_and_resolve():
    names = set(stzsar.__all__)
    assert {"build_model", "video_input", "STZSARModel", "STIModule", "ClassBank",
            "load_model_from_checkpoint", "load_config", "__version__"} <= names
    assert names <= set(dir(stzsar))
    for name in stzsar.__all__:
        assert getattr(stzsar, name) is not None
    assert stzsar.video_input.__module__ == "stzsar.inference"


def test_import_stays_cheap():
    """The names are imported on first use: `import stzsar` alone loads no torch."""
    code = "import sys, stzsar; dir(stzsar); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
