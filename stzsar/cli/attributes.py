"""``stzsar attributes``: descriptive attributes for a class list (docs/method.md section 1).

Examples::

    # offline (default): deterministic, no network
    stzsar attributes --classes ucf_labels.csv --descriptions ucf101_label_defn.json --out ucf101_attributes.json

    # a built-in class list; its ER-ZSAR descriptions are fetched (checksum-pinned) into the user cache
    stzsar attributes --dataset ucf101 --out ucf101_attributes.json

    # an LLM, hosted or local (vLLM, Ollama, llama.cpp: anything OpenAI-compatible)
    OPENAI_API_KEY=... stzsar attributes --classes ucf_labels.csv --descriptions ucf101_label_defn.json \\
        --out ucf101_attributes.json --llm-model gpt-4o-mini
    stzsar attributes ... --llm-model llama3.1:8b --llm-base-url http://localhost:11434/v1

    # look at the prompts of an existing file without extracting anything
    stzsar attributes --classes ucf_labels.csv --out ucf101_attributes.json --show-only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("stzsar.attributes")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "attributes",
        help="extract keyword attributes of action classes from their descriptions",
        description="Extract Na keyword attributes per class from class descriptions, with an LLM "
        "(OpenAI-compatible) or offline, and write them to an editable JSON file. Results are cached: "
        "a rerun makes no request and writes the same file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("--classes", type=Path,
                        help="class list: text (one name a line), id,name CSV, classInd.txt, JSON list, "
                        "or a built-in name (stzsar resources list)")
    parser.add_argument("--dataset", metavar="NAME",
                        help="a built-in list (ucf101, hmdb51, k400, k600-added, k600-split1..3): its classes "
                        "(unless --classes) and ER-ZSAR's descriptions (unless --descriptions), fetched into the "
                        "user cache with a pinned SHA-256 ($STZSAR_DESCRIPTIONS_URL changes the URL base)")
    parser.add_argument("--descriptions", type=Path,
                        help="ER-ZSAR *_label_defn.json, or a JSON/CSV {class: description} map; "
                        "without it (and without --dataset) every class uses its name alone")
    parser.add_argument("--out", required=True, type=Path, help="attributes file to write (JSON)")
    parser.add_argument("--num", type=int, default=8, help="attributes per class, Na (default 8)")
    parser.add_argument("--extractor", choices=("auto", "llm", "keybert", "yake", "rake"), default="auto",
                        help="auto: the LLM when --llm-model is given, else keybert (offline)")
    parser.add_argument("--llm-model", help="model name on the OpenAI-compatible server (selects the LLM)")
    parser.add_argument("--llm-base-url", help="server URL (default $OPENAI_BASE_URL, else the OpenAI API); "
                        "the key comes from $OPENAI_API_KEY")
    parser.add_argument("--llm-concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--llm-retries", type=int, default=5,
                        help="retries per class on 429, 5xx, timeouts and malformed answers (default 5)")
    parser.add_argument("--fill", choices=("vocab", "descriptions", "none"), default="vocab",
                        help="keybert: where words come from when a description is too short (default vocab)")
    parser.add_argument("--cache", type=Path,
                        help="cache file (default: OUT with suffix .cache.json); reruns read it")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write a cache file")
    parser.add_argument("--no-distinctive", dest="distinctive", action="store_false", default=None,
                        help="keep the extractor's own order (default for offline extractors: words that "
                        "few classes of the list use come first)")
    parser.add_argument("--keep-name-words", action="store_true",
                        help="keep attributes made only of the class name's words")
    parser.add_argument("--show", action="store_true",
                        help="print every class with its prompt and token count (77-token budget)")
    parser.add_argument("--show-only", action="store_true",
                        help="print the prompts of the existing --out file, extract nothing")
    parser.add_argument("--template", default=None, help="prompt template for --show (default: the project's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    parser.set_defaults(func=run)
    return parser


def _make_extractor(args):
    from stzsar.attributes import LLMExtractor, make_offline_extractor

    choice = args.extractor
    if choice == "auto":
        choice = "llm" if args.llm_model else "keybert"
    if choice == "llm":
        if not args.llm_model:
            raise SystemExit("error: --extractor llm needs --llm-model NAME")
        return LLMExtractor(
            model=args.llm_model, base_url=args.llm_base_url, concurrency=args.llm_concurrency,
            timeout=args.llm_timeout, max_retries=args.llm_retries,
        )
    if args.llm_base_url:
        raise SystemExit("error: --llm-base-url is given but no --llm-model: name the model to use the LLM")
    options = {"exclude_name_words": not args.keep_name_words}
    if choice == "keybert":
        options["fill"] = args.fill
    return make_offline_extractor(choice, **options)


def show_prompts(classes, attributes, num_expected=None, template=None, out=sys.stdout) -> int:
    """Print each class, its prompt and its token count; returns the number of prompts that dropped attributes."""
    from stzsar.classes import canonical_name
    from stzsar.text.prompts import CONTEXT_LENGTH, DEFAULT_TEMPLATE, build_prompt

    by_key = {canonical_name(k): v for k, v in attributes.items()}
    cut = 0
    width = max(len(c) for c in classes)
    for name in classes:
        keywords = by_key.get(canonical_name(name))
        prompt = build_prompt(name, keywords or (), template or DEFAULT_TEMPLATE, warn=False)
        notes = []
        if keywords is None:
            notes.append("NOT IN FILE")
        elif num_expected and len(keywords) < num_expected:
            notes.append(f"{len(keywords)} attributes")
        if prompt.dropped:
            cut += 1
            notes.append(f"dropped {prompt.dropped}")
        note = ("  [" + "; ".join(notes) + "]") if notes else ""
        print(f"{name:<{width}}  {prompt.num_tokens:2d}/{CONTEXT_LENGTH}  {prompt.text}{note}", file=out)
    return cut


def _no_progress_bars() -> None:
    """--quiet: no bars from stzsar or from the libraries it calls (sentence-transformers and
    transformers draw their own while loading the model)."""
    os.environ["TQDM_DISABLE"] = "1"  # every tqdm that is not given `disable=` explicitly
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def run(args) -> int:
    from stzsar.attributes import (
        ExtractionError, extract_attributes, read_attributes_file, read_descriptions,
    )
    from stzsar.classes import read_class_list

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(levelname)s: %(message)s")
    if args.quiet:
        _no_progress_bars()
    if args.num < 1:
        print("error: --num must be at least 1", file=sys.stderr)
        return 2
    from stzsar.resources import UnknownResourceError, get
    from stzsar.resources.descriptions import DescriptionFetchError, describe_source, fetch_descriptions

    if args.classes is None and args.dataset is None:
        print("error: give --classes FILE or --dataset NAME", file=sys.stderr)
        return 2
    try:
        resource = get(args.dataset) if args.dataset else None
        classes = read_class_list(args.classes or resource.classes_path)
        if args.show_only:
            attributes, header = read_attributes_file(args.out)
            show_prompts(classes, attributes, header.get("num"), args.template)
            return 0
        if args.descriptions is None and resource is not None:
            args.descriptions = fetch_descriptions(resource.name)
        descriptions = read_descriptions(args.descriptions) if args.descriptions else None
        extractor = _make_extractor(args)
    except (OSError, ValueError, UnknownResourceError, DescriptionFetchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ExtractionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cache = None if args.no_cache else (args.cache or args.out.with_suffix(".cache.json"))
    try:
        result = extract_attributes(
            classes, descriptions, extractor, num=args.num, cache=cache,
            drop_name_words=not args.keep_name_words, progress=not args.quiet, distinctive=args.distinctive,
            source=describe_source(args.descriptions) if args.descriptions else None,
        )
    except ExtractionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # e.g. an unreadable cache file
        print(f"error: {error}", file=sys.stderr)
        return 2
    result.save(args.out)
    logger.info(
        "wrote %d classes x up to %d attributes to %s (%d extracted, %d from the cache%s)",
        len(classes), args.num, args.out, result.requests, len(classes) - result.requests,
        f"; cache {cache}" if cache else "",
    )
    if descriptions is None:
        logger.info("no --descriptions: attributes come from the class names alone")
    if args.show:
        cut = show_prompts(classes, result.attributes, args.num, args.template)
        if cut:
            logger.warning("%d prompt(s) dropped trailing attributes to fit 77 tokens", cut)
    return 0
