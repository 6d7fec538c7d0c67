"""Data: the data sets greencore fine-tunes on, and their conversion to token ids and batches.

    sources.py         `load_summarization`: stdlib-tldr (offline default), hub presets, local files -> DatasetDict
    stdlib.py          the stdlib-tldr corpus builder (docstrings of the running Python's standard library), its cache
    classification.py  `load_classification`: stdlib-topic (offline default), SST-2, AG News, local files
    topics.py          the stdlib-topic builder (a docstring -> its standard-library package)
    batching.py  prompts, token ids, padding, collation and seeded batch orders
"""

from .batching import (IGNORE_INDEX, PROMPTS, batches, collate, encode_examples, encode_labelled, eos_token_id,
                       pad_batch, pad_prompts, pad_token_id, prompt_for_generation, resolve_prompt, sample_batches,
                       sample_labelled_batches, scored_targets)
from .classification import CLASSIFICATION_DATASETS, load_classification
from .sources import DATASETS, load_summarization
from .stdlib import BUILDER_VERSION, build_stdlib_tldr, stdlib_cache_path

__all__ = [
    "BUILDER_VERSION",
    "CLASSIFICATION_DATASETS",
    "DATASETS",
    "IGNORE_INDEX",
    "PROMPTS",
    "batches",
    "build_stdlib_tldr",
    "collate",
    "encode_examples",
    "encode_labelled",
    "eos_token_id",
    "load_classification",
    "load_summarization",
    "pad_batch",
    "pad_prompts",
    "pad_token_id",
    "prompt_for_generation",
    "resolve_prompt",
    "sample_batches",
    "sample_labelled_batches",
    "scored_targets",
    "stdlib_cache_path",
]
