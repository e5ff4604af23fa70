"""``stzsar predict`` and ``stzsar explain`` on a tiny random model and generated videos."""

import json
import math

import numpy as np
import pytest
import torch

from stzsar.cli.main import main
from stzsar.data.synthetic import write_video
from stzsar.eval.explain import (ROLE_COLOURS, Explanation, explain_video, explanation_figure, prompt_words,
                                 render_explanation, word_colour)
from stzsar.eval.loading import clip_spec, load_video
from stzsar.model import build_model
from stzsar.train.checkpoint import load_model_from_checkpoint, save_checkpoint
from tests.sti_reference import sti_loops

CLASSES = ["apply eye makeup", "salsa spin", "archery", "playing guitar", "yo yo", "surfing", "bowling"]
ATTRIBUTES = {"salsa spin": ["dance", "partner", "turn"], "archery": ["bow", "arrow", "target"],
              "surfing": ["wave", "board"]}
FRAMES = 4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = build_model("stzsar-tiny", backend="torch")
    checkpoint = save_checkpoint(root / "tiny.pt", model)
    video = root / "clip.mp4"
    write_video(video, 12, 64, 48)
    empty = root / "empty.mp4"
    empty.write_bytes(b"")
    classes = root / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    attributes = root / "attributes.json"
    attributes.write_text(json.dumps(ATTRIBUTES))
    return {"root": root, "checkpoint": checkpoint, "video": video, "empty": empty, "classes": classes,
            "attributes": attributes}


def common(assets):
    return ["--classes", str(assets["classes"]), "--attributes", str(assets["attributes"]),
            "--checkpoint", str(assets["checkpoint"]), "--num-frames", str(FRAMES), "--device", "cpu",
            "--no-cache"]


def reference_probs(assets, views=(1, 1)):
    """Class probabilities from the model's forward on the decoded clip, views averaged in float64."""
    model, _ = load_model_from_checkpoint(assets["checkpoint"])
    bank = model.encode_classes(CLASSES, ATTRIBUTES)
    clip, _ = load_video(assets["video"], clip_spec(model, FRAMES, *views))
    with torch.no_grad():
        per_view = [model(clip[v : v + 1], bank)[0].double().softmax(-1) for v in range(clip.shape[0])]
    return torch.stack(per_view).mean(0), clip.shape[0]


def test_predict_json_gives_the_models_top_classes(assets, capsys):
    assert main(["predict", str(assets["video"]), *common(assets), "--top-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    (prediction,) = answer["predictions"]
    assert prediction["error"] is None and prediction["views"] == 1
    # one name per meaning: the clip's frames at the top, the file's length (12 frames written) per video
    assert answer["clip_frames"] == FRAMES and prediction["video_frames"] == 12
    assert "num_frames" not in answer and "num_frames" not in prediction
    probs, _ = reference_probs(assets)
    best = probs.argsort(descending=True)[:3].tolist()
    assert [t["class"] for t in prediction["top"]] == [CLASSES[i] for i in best]
    np.testing.assert_allclose([t["prob"] for t in prediction["top"]], probs[best].numpy(), rtol=1e-5)


def test_predict_averages_views_and_reports_bad_files(assets, capsys):
    code = main(["predict", str(assets["video"]), str(assets["empty"]), str(assets["root"] / "missing.mp4"),
                 *common(assets), "--views", "2x3", "--json"])
    assert code == 1  # some videos could not be read
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    good, empty, missing = predictions
    assert good["views"] == 6 and good["error"] is None
    probs, views = reference_probs(assets, (2, 3))
    assert views == 6
    best = probs.argsort(descending=True)[:5].tolist()
    assert [t["class"] for t in good["top"]] == [CLASSES[i] for i in best]
    np.testing.assert_allclose([t["prob"] for t in good["top"]], probs[best].numpy(), rtol=1e-5)
    assert "empty" in empty["error"] and empty["top"] == []
    assert "not found" in missing["error"]


def test_predict_says_an_unreadable_files_reason_once(assets, capsys):
    assert main(["predict", str(assets["video"]), str(assets["empty"]), *common(assets)]) == 1
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert printed.count("empty file") == 1
    assert f"{assets['empty']}\n  cannot be read: empty file" in captured.out
    assert main(["predict", str(assets["empty"]), *common(assets), "--json"]) == 1
    captured = capsys.readouterr()
    assert "empty file" in json.loads(captured.out)["predictions"][0]["error"]
    assert "empty file" not in captured.err  # the JSON carries it


def test_an_attribute_entry_with_a_typo_is_flagged_with_the_class_it_meant(assets, tmp_path, caplog):
    classes = tmp_path / "classes.txt"
    classes.write_text("grow blue\narchery\nsurfing\n")
    attributes = tmp_path / "attributes.json"
    attributes.write_text(json.dumps({"grwo blue": ["sky", "paint"], "archery": ["bow"], "Surfing": ["wave"],
                                      "bowling": ["pins"]}))
    args = ["predict", str(assets["video"]), "--classes", str(classes), "--attributes", str(attributes),
            "--checkpoint", str(assets["checkpoint"]), "--num-frames", str(FRAMES), "--device", "cpu", "--no-cache"]
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    err = caplog.text  # the command's warnings (pytest holds the logging handlers)
    assert "no attributes for 1 of 3 classes (they use the class name alone): ['grow blue']" in err
    assert "the attribute entry 'grwo blue' matches no class of the list; did you mean 'grow blue'?" in err
    # an entry for a class of another list is unknown too, with no guess ('Surfing' is 'surfing')
    assert "1 attribute entry matches no class of the list: ['bowling']" in err
    assert "Surfing" not in err


def test_attribute_entries_for_other_lists_can_pass_quietly(caplog):
    from stzsar.eval.loading import check_attributes_cover

    attributes = {"grwo blue": ["sky"], "archery": ["bow"], "bowling": ["pins"]}
    with caplog.at_level("WARNING", logger="stzsar.eval.loading"):
        missing = check_attributes_cover(["grow blue", "archery"], attributes, "split 1", unknown_entries=False)
    assert missing == ["grow blue"]
    text = caplog.text
    assert "did you mean 'grow blue'" in text and "bowling" not in text


def test_predict_text_output(assets, capsys):
    assert main(["predict", str(assets["video"]), *common(assets), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(assets["video"])
    assert lines[1].lstrip().startswith("1. ") and lines[2].lstrip().startswith("2. ") and len(lines) == 3
    assert main(["predict", str(assets["video"]), *common(assets), "--top-k", "0"]) == 2


@torch.no_grad()
def heat_reference(frames, patches, words, mask, sti):
    """Per-patch best word score and the (patch, word) winner per frame, by float64 loops."""
    def l2n(x):
        return x / x.norm(dim=-1, keepdim=True)

    P = torch.relu(l2n(patches.double()) @ sti.patch_proj.weight.double().t() + sti.patch_proj.bias.double())
    A = torch.relu(l2n(words.double()) @ sti.word_proj.weight.double().t() + sti.word_proj.bias.double())
    T, Np = P.shape[:2]
    valid = [l for l in range(A.shape[0]) if bool(mask[l])]
    heat = torch.empty(T, Np, dtype=torch.float64)
    winners = []
    for t in range(T):
        best, where = -math.inf, None
        for k in range(Np):
            scores = [float(P[t, k] @ A[l]) for l in valid]
            heat[t, k] = max(scores)
            for l, s in zip(valid, scores):
                if s > best:
                    best, where = s, (k, l)
        winners.append(where)
    return heat, winners


def test_explanation_matches_the_spec_equations(assets, tmp_path):
    model, _ = load_model_from_checkpoint(assets["checkpoint"])
    model = model.double()
    bank = model.encode_classes(CLASSES, ATTRIBUTES)
    clip, total = load_video(assets["video"], clip_spec(model, FRAMES))
    target = CLASSES.index("salsa spin")  # a class with attributes, whatever the top class is
    e = explain_video(model, clip[0].double(), bank, CLASSES, target=target, name="clip.mp4")
    with torch.no_grad():
        frames, patches = model.encode_video(clip.double())
    sti = model.sti
    s_sp, s_temp, _, cos = sti_loops(frames, patches, bank.words[target:target + 1], bank.word_mask[target:target + 1],
                                     bank.class_emb[target:target + 1], sti.patch_proj.weight.detach(),
                                     sti.patch_proj.bias.detach(), sti.word_proj.weight.detach(),
                                     sti.word_proj.bias.detach(), sti.temperature)
    np.testing.assert_allclose(e.s_sp, s_sp[0, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(e.s_temp, s_temp[0, 0].numpy(), rtol=1e-6)
    heat, winners = heat_reference(frames[0].detach(), patches[0].detach(), bank.words[target],
                                   bank.word_mask[target], sti)
    np.testing.assert_allclose(e.patch_scores.reshape(FRAMES, -1), heat.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.patch_scores.reshape(FRAMES, -1).max(1), s_sp[0, 0].numpy(), rtol=1e-5)
    assert [(int(k), int(l)) for k, l in zip(e.winner_patch, e.winner_word)] == winners
    # The probabilities are the model's.
    logits = model.logit_scale * cos  # only the target class was computed by the loops
    with torch.no_grad():
        full = model.logits_from_features(frames, patches, bank)[0]
    assert float(full[target]) == pytest.approx(float(logits[0, 0]), rel=1e-6)
    np.testing.assert_allclose(e.probs, full.softmax(-1).numpy(), rtol=1e-6)
    assert e.prompt == "This is a video about salsa spin, dance, partner, turn."
    prompt_vocabulary = {"this", "is", "a", "video", "about", "salsa", "spin", "dance", "partner", "turn", ",", "."}
    for word in e.winning_words():
        assert word["word"] in prompt_vocabulary
        # the default word set: template words and punctuation never win
        assert word["role"] in ("class", "attribute") and word["word"] not in {"this", "is", "a", "video", ",", "."}
    assert sum(w["weight"] for w in e.winning_words()) == pytest.approx(float(s_temp[0, 0].sum()), rel=1e-6)
    path = render_explanation(e, tmp_path / "explained.png")
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[1] > 800


def test_prompt_positions_map_to_words_and_roles():
    model = build_model("stzsar-tiny", backend="torch")
    prompt = "This is a video about apply eye makeup, mascara, eyelashes."
    valid = list(range(14))
    words = prompt_words(model.text.tokenizer, prompt, "ApplyEyeMakeup", "This is a video about {}.", valid)
    # By hand: token positions after start-of-text, one whole word each for this prompt.
    expected = [("this", "template"), ("is", "template"), ("a", "template"), ("video", "template"),
                ("about", "template"), ("apply", "class"), ("eye", "class"), ("makeup", "class"),
                (",", "punctuation"), ("mascara", "attribute"), (",", "punctuation"), ("eyelashes", "attribute"),
                (".", "punctuation")]
    assert [(words[p].word, words[p].role) for p in range(13)] == expected
    assert 13 not in words  # the end-of-text position is no word
    assert words[6].phrase == "apply eye makeup" and words[9].phrase == "mascara"
    # A word split into several BPE pieces maps every piece to the whole word.
    long_prompt = "This is a video about zzyzxqua."
    pieces = prompt_words(model.text.tokenizer, long_prompt, "zzyzxqua", "This is a video about {}.", range(12))
    split_word = [w for w in pieces.values() if w.role == "class"]
    assert len(split_word) > 1 and {w.word for w in split_word} == {"zzyzxqua"}


def test_explain_command_writes_the_picture(assets, tmp_path, capsys):
    out = tmp_path / "why.png"
    numbers = tmp_path / "why.json"
    code = main(["explain", str(assets["video"]), *common(assets), "--out", str(out), "--json", str(numbers),
                 "--class", "SalsaSpin"])
    assert code == 0
    assert out.stat().st_size > 10_000
    data = json.loads(numbers.read_text())
    assert data["predicted"] == "salsa spin"  # the class asked for, in any naming style
    assert len(data["s_temp"]) == FRAMES and math.isclose(sum(data["s_temp"]), 1.0, rel_tol=1e-5)
    assert data["frame_indices"] == [1, 4, 7, 10]  # middles of 4 segments of 12 frames
    assert data["winning_words"] and all({"word", "role", "weight"} <= set(w) for w in data["winning_words"])
    assert "wrote" in capsys.readouterr().out
    assert main(["explain", str(assets["empty"]), *common(assets), "--out", str(tmp_path / "x.png")]) == 1
    assert main(["explain", str(assets["video"]), *common(assets), "--out", str(tmp_path / "y.png"),
                 "--class", "no such class"]) == 2


def hand_explanation(winner_word, words, prompt="", size=32, grid=4):
    """An :class:`Explanation` with given winning word positions (numbers need no model)."""
    T = len(winner_word)
    rng = np.random.default_rng(0)
    s_temp = rng.random(T)
    return Explanation(video="clip.mp4", class_names=["grow blue", "other"], probs=np.array([0.7, 0.3]), target=0,
                       prompt=prompt, frames=rng.integers(0, 255, (T, size, size, 3), dtype=np.uint8),
                       patch_scores=rng.random((T, grid, grid)), s_sp=rng.random(T), s_temp=s_temp / s_temp.sum(),
                       winner_patch=rng.integers(0, grid * grid, T), winner_word=np.asarray(winner_word), words=words,
                       frame_indices=list(range(0, 3 * T, 3)))


def test_a_word_that_is_class_and_attribute_keeps_the_role_of_its_position():
    model = build_model("stzsar-tiny", backend="torch")
    prompt = "This is a video about grow blue, blue, sky."
    words = prompt_words(model.text.tokenizer, prompt, "grow blue", "This is a video about {}.", range(14))
    # By hand: position 6 is the class name's "blue", position 8 the attribute "blue".
    assert (words[6].word, words[6].role) == ("blue", "class")
    assert (words[8].word, words[8].role) == ("blue", "attribute")
    by_position = {0: "class", 1: "attribute", 2: "attribute", 3: "attribute"}
    e = hand_explanation([6, 8, 8, 10], words, prompt)
    data = json.loads(json.dumps(e.as_dict()))
    json_role = {t: row["role"] for row in data["winning_words"] for t in row["frames"]}
    for t, role in by_position.items():
        assert json_role[t] == role and data["frame_roles"][t] == role
        assert word_colour(e, t) == ROLE_COLOURS[role]  # the colour the picture gives the frame's word
    blue = sorted((row["role"], row["frames"]) for row in data["winning_words"] if row["word"] == "blue")
    assert blue == [("attribute", [1, 2]), ("class", [0])]
    assert sum(row["weight"] for row in data["winning_words"]) == pytest.approx(float(e.s_temp.sum()))


def test_sixteen_frames_wrap_into_rows_with_readable_type(tmp_path):
    import matplotlib.image
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    model = build_model("stzsar-tiny", backend="torch")
    prompt = "This is a video about grow blue, blue, sky."
    words = prompt_words(model.text.tokenizer, prompt, "grow blue", "This is a video about {}.", range(14))
    e = hand_explanation([5, 6, 8, 10] * 4, words, prompt, size=224, grid=14)  # ViT-B/16's input and patches
    fig = explanation_figure(e)
    try:
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert texts and min(t.get_fontsize() for t in texts) >= 9
        pictures = [ax.get_position() for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
        assert len(pictures) == 32  # frame and heat map of each of the 16 frames
        # two rows of 8 frames, each row a frame row and a heat-map row
        assert len({round(b.y0, 3) for b in pictures}) == 4 and len({round(b.x0, 3) for b in pictures}) == 8
    finally:
        plt.close(fig)
    height, width = matplotlib.image.imread(render_explanation(e, tmp_path / "sixteen.png")).shape[:2]
    assert 800 < width <= 1600 and height < 1600


def test_explain_shows_frames_undone_with_the_models_own_normalisation():
    # A model whose input normalisation is not OpenAI's (SigLIP uses 0.5 / 0.5): the frames shown
    # must be the pixels that, normalised with the model's own mean and std, give the clip.
    model = build_model("stzsar-tiny", backend="torch")
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    model.video.visual.image_mean, model.video.visual.image_std = mean, std
    assert model.image_mean == mean and model.image_std == std
    size = model.image_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, size, size, 3), generator=g, dtype=torch.uint8)
    clip = (pixels.permute(0, 3, 1, 2).double() / 255.0 - 0.5) / 0.5  # the equation, by hand
    bank = model.encode_classes(["grow blue", "sky"], {"grow blue": ["blue"], "sky": ["cloud"]})
    e = explain_video(model, clip, bank, ["grow blue", "sky"])
    assert np.array_equal(e.frames, pixels.numpy())
