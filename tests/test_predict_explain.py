"""``stzsar predict`` and ``stzsar explain`` on a tiny random model and generated videos."""

import json
import math

import numpy as np
import pytest
import torch

from stzsar.cli.main import main
from stzsar.data.synthetic import write_video
from stzsar.eval.explain import explain_video, prompt_words, render_explanation
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
    assert prediction["error"] is None and prediction["views"] == 1 and prediction["num_frames"] == 12
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
