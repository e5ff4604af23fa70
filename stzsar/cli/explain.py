"""``stzsar explain``: a picture of why the model chose its class for one video (paper Fig. 6).

Example::

    stzsar explain clip.mp4 --classes classes.txt --attributes attributes.json \\
        --checkpoint run/checkpoints/step_00010000.pt --out clip_explained.png [--class "salsa spin"]

The PNG shows the sampled frames; under each, the patch heat map of the best-matching prompt word
for the top class (the winning patch boxed, the winning word as its title, coloured by role:
green attribute, blue class name, grey template word or punctuation); the temporal saliency
``S_temp`` as bars under the frames; the top classes and the winning words. ``--json FILE`` also
writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from stzsar.cli.eval import add_model_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="show the frames, patches and words behind a prediction", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("video", metavar="VIDEO", help="video file")
    parser.add_argument("--classes", required=True, metavar="FILE", help="class list to choose from")
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="FILE.png", help="where the picture goes")
    parser.add_argument("--class", dest="target", metavar="NAME",
                        help="explain this class instead of the top one")
    parser.add_argument("--json", dest="json_out", metavar="FILE", help="also write the numbers as JSON")
    parser.set_defaults(func=run_explain)


def run_explain(args: argparse.Namespace) -> int:
    from stzsar.classes import ClassIndex, ClassListError
    from stzsar.cli.predict import prepare
    from stzsar.data.errors import VideoDecodeError
    from stzsar.data.sampling import middle_indices
    from stzsar.eval.explain import explain_video, render_explanation
    from stzsar.eval.loading import load_video
    from stzsar.model import PretrainedWeightsUnavailable
    from stzsar.train.checkpoint import CheckpointError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        setup = prepare(args)
        target = ClassIndex(setup["classes"]).index(args.target) if args.target else None
    except (FileNotFoundError, ClassListError, ValueError, KeyError, CheckpointError,
            PretrainedWeightsUnavailable) as error:
        print(f"stzsar explain: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
        return 2
    try:
        clip, total = load_video(args.video, setup["spec"])
    except VideoDecodeError as error:
        print(f"stzsar explain: {error.path}: cannot be read: {error.reason}", file=sys.stderr)
        return 1
    explanation = explain_video(
        setup["model"], clip[0], setup["bank"], setup["classes"], target=target, name=args.video,
        frame_indices=middle_indices(total, setup["spec"].num_frames),
    )
    path = render_explanation(explanation, args.out)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as stream:
            json.dump(explanation.as_dict(), stream, indent=2)
    top_name, top_prob = explanation.class_names[explanation.target], explanation.probs[explanation.target]
    words = ", ".join(w["word"] for w in explanation.winning_words()[:5])
    print(f"{args.video}: {top_name} ({100 * top_prob:.1f}%); winning words: {words}")
    print(f"wrote {path}")
    return 0
