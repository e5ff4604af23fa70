"""``stzsar resources``: the built-in class lists and attribute files, and the public descriptions.

Examples::

    stzsar resources list                      # names, sizes, origins
    stzsar resources show k600-split1          # the classes with their attributes
    stzsar resources fetch descriptions        # ER-ZSAR's description files into the user cache
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import List


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "resources", help="built-in class lists, zero-shot splits and attribute files",
        description="The class lists and attribute files that ship with the package (usable by name "
        "wherever a class list or an attribute file is accepted), the training configurations (usable "
        "by name as --config), and the public class descriptions.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1],
    )
    commands = parser.add_subparsers(dest="resources_command", metavar="ACTION")
    listing = commands.add_parser("list", help="the built-in names with their sizes and origins, and the "
                                  "built-in training configurations")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    listing.set_defaults(func=run_list)
    show = commands.add_parser("show", help="a built-in class list with its attributes")
    show.add_argument("name", help="a built-in name (see 'stzsar resources list')")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=run_show)
    fetch = commands.add_parser("fetch", help="download public files into the user cache (checksum-pinned)")
    fetch.add_argument("what", choices=("descriptions",), help="what to fetch")
    fetch.add_argument("--dataset", action="append", metavar="NAME",
                       help="only the descriptions of this dataset or built-in list (repeatable; default all)")
    fetch.add_argument("--url", metavar="BASE", help="URL base instead of the pinned repository "
                       "(default $STZSAR_DESCRIPTIONS_URL, else raw.githubusercontent.com at commit e3130fd)")
    fetch.add_argument("--refresh", action="store_true", help="download again even when a verified copy is cached")
    fetch.set_defaults(func=run_fetch)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    return parser


def _summary(resource) -> dict:
    from stzsar.attributes import read_attributes_file
    from stzsar.classes import read_class_list

    attributes, header = read_attributes_file(resource.attributes_path)
    return {
        "name": resource.name, "title": resource.title, "classes": len(read_class_list(resource.classes_path)),
        "origin": resource.origin, "index": resource.index, "note": resource.note,
        "attributes": {"classes": len(attributes), "num": header.get("num"), "extractor": header.get("extractor"),
                       "descriptions": header.get("descriptions")},
    }


def _config_summaries() -> List[dict]:
    """The training configurations that ship with the package, with the first line of their header."""
    from stzsar.config import builtin_configs

    rows = []
    for name, path in builtin_configs().items():
        header = next((line.lstrip("# ").strip() for line in path.read_text(encoding="utf-8").splitlines()
                       if line.startswith("#") and line.lstrip("# ").strip()), "")
        rows.append({"name": name, "path": str(path), "about": header})
    return rows


def run_list(args) -> int:
    from stzsar.resources import RESOURCES

    rows = [_summary(r) for r in RESOURCES.values()]
    configs = _config_summaries()
    if args.json:
        print(json.dumps({"resources": rows, "configs": configs}, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        a = row["attributes"]
        print(f"{row['name']:<{width}}  {row['classes']:4d} classes  attributes: Na={a['num']} ({a['extractor']})  "
              f"{row['title']}")
        print(f"{'':<{width}}  from {row['origin']}")
    if configs:
        print("\ntraining configurations (--config NAME):")
        width = max(len(c["name"]) for c in configs)
        for config in configs:
            print(f"{config['name']:<{width}}  {config['about']}")
    return 0


def run_show(args) -> int:
    from stzsar.attributes import read_attributes_file
    from stzsar.classes import canonical_name, read_class_list
    from stzsar.resources import UnknownResourceError, get

    try:
        resource = get(args.name)
    except UnknownResourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = read_class_list(resource.classes_path)
    attributes, header = read_attributes_file(resource.attributes_path)
    by_key = {canonical_name(k): v for k, v in attributes.items()}
    if args.json:
        print(json.dumps({**_summary(resource), "header": header,
                          "classes": [{"id": i, "name": c, "attributes": by_key.get(canonical_name(c), [])}
                                      for i, c in enumerate(classes)]}, indent=1))
        return 0
    print(f"# {resource.name}: {resource.title}, {len(classes)} classes")
    print(f"# from {resource.origin}")
    print(f"# index: {resource.index}; {resource.note}")
    print(f"# attributes: {json.dumps(header, sort_keys=True)}")
    for i, name in enumerate(classes):
        print(f"{i}\t{name}\t{', '.join(by_key.get(canonical_name(name), []))}")
    return 0


def run_fetch(args) -> int:
    from stzsar.resources import UnknownResourceError
    from stzsar.resources.descriptions import DESCRIPTION_FILES, DescriptionFetchError, description_file, fetch_descriptions

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        wanted: List = ([description_file(n) for n in args.dataset] if args.dataset
                        else list(DESCRIPTION_FILES.values()))
    except UnknownResourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    status = 0
    for entry in dict.fromkeys(wanted):
        try:
            path = fetch_descriptions(entry.key, base=args.url, refresh=args.refresh)
        except DescriptionFetchError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
            continue
        print(f"{entry.key}\t{path}\t(sha256 {entry.sha256[:12]}, {entry.origin})")
    return status
