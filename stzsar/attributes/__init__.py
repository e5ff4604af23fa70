"""Descriptive attributes (docs/method.md section 1): keywords about the objects, motions and context of
every action class, extracted from class descriptions by an LLM or offline, post-processed,
cached and written to an editable JSON file that the model reads with :func:`load_attributes`.

>>> from stzsar.attributes import extract_attributes, read_descriptions, load_attributes
>>> result = extract_attributes(classes, read_descriptions("ucf101_label_defn.json"))  # doctest: +SKIP
>>> result.save("ucf101_attributes.json")                                              # doctest: +SKIP
>>> load_attributes("ucf101_attributes.json")["ApplyEyeMakeup"]                        # doctest: +SKIP
"""

from stzsar.attributes.base import Extraction, ExtractionError, Extractor
from stzsar.attributes.cache import AttributeCache, cache_key
from stzsar.attributes.descriptions import (
    DescriptionError,
    MatchedDescriptions,
    match_descriptions,
    read_descriptions,
)
from stzsar.attributes.llm import LLMConfigError, LLMExtractor, parse_keyword_list
from stzsar.attributes.offline import (
    DEFAULT_OFFLINE,
    KeyBERTExtractor,
    RakeExtractor,
    YakeExtractor,
    make_offline_extractor,
)
from stzsar.attributes.pipeline import (
    DEFAULT_NUM,
    AttributeFileError,
    AttributeSet,
    extract_attributes,
    load_attributes,
    read_attributes_file,
)
from stzsar.attributes.postprocess import STOPWORDS, normalize_keyword, postprocess_keywords

__all__ = [
    "AttributeCache", "AttributeFileError", "AttributeSet", "DEFAULT_NUM", "DEFAULT_OFFLINE",
    "DescriptionError", "Extraction", "ExtractionError", "Extractor", "KeyBERTExtractor",
    "LLMConfigError", "LLMExtractor", "MatchedDescriptions", "RakeExtractor", "STOPWORDS",
    "YakeExtractor", "cache_key", "extract_attributes", "load_attributes", "make_offline_extractor",
    "match_descriptions", "normalize_keyword", "parse_keyword_list", "postprocess_keywords",
    "read_attributes_file", "read_descriptions",
]
