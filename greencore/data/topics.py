"""`stdlib-topic`: text classification built from the docstrings of the running Python's standard library.

Each function, class or module docstring of one of the largest standard-library packages (`LABELS_WANTED` of those
with at least `MIN_MODULES` modules, by docstring count) gives one example: its text is the docstring with every
module and qualified name removed (the labels' names too, wherever they appear), its label the package. Splits are
by module (`email.parser` and `email.utils` may land in different splits, no module in two), assigned per label so
that every label is in every split. Built with `ast` like stdlib-tldr (no imports run), cached the same way.
"""

from __future__ import annotations

import ast
import os
import platform
import random
import re
import sysconfig
import tokenize
from collections import Counter, defaultdict
from pathlib import Path

import datasets

from .stdlib import SPLITS, _docstrings, _module_name, _source_files, load_cached

__all__ = ["TOPIC_BUILDER_VERSION", "build_stdlib_topic", "load_stdlib_topic", "topic_cache_path"]

TOPIC_BUILDER_VERSION = 1
LABELS_WANTED = 10
MIN_MODULES = 5  # a label needs modules to spread over three module-disjoint splits
TEXT_WORDS = (12, 200)
SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _names_in(module: str, header: str) -> set[str]:
    """The identifiers a docstring's own names give away: its module path and its qualified name, part by part."""
    qualname = header.split("(")[0].removeprefix("class ").removeprefix("module ")
    return {part for name in (module, qualname) for part in name.split(".") if part}


def _clean(doc: str, names: set[str]) -> str:
    """`doc` on one line, without the words in `names` (whole words, any case, also inside dotted names)."""
    text = " ".join(doc.split())
    pattern = r"(?<![\w])(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?![\w])"
    text = re.sub(pattern, " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\s*\.(\s*\.)+", ".", text)  # what is left of a dotted name
    return " ".join(text.split())


def _assign(sizes: Counter) -> dict[str, str]:
    """Module -> split for one label: largest module first, each to the split furthest below its share of the
    label's docstrings (train first among equals), so every split gets one when there are three or more modules."""
    total = sum(sizes.values())
    have = dict.fromkeys(SPLITS, 0)
    out: dict[str, str] = {}
    for module in sorted(sizes, key=lambda m: (-sizes[m], m)):
        split = max(SPLITS, key=lambda s: (SHARES[s] * total - have[s], s == "train"))
        if not all(have.values()) and have[split]:  # until every split has a module, fill an empty one
            split = next(s for s in SPLITS if not have[s])
        out[module] = split
        have[split] += sizes[module]
    return out


def build_stdlib_topic(root: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Build stdlib-topic from the Python sources under `root` (default: the running Python's standard library)."""
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"]).resolve()
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: pass the folder that holds the Python sources")
    docs: list[tuple[str, str, str]] = []  # (module, header, docstring)
    for path in _source_files(root, None):
        try:
            with tokenize.open(path) as f:
                tree = ast.parse(f.read(), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = _module_name(path, root)
        docs.extend((module, header, doc) for header, doc in _docstrings(tree, module))
    modules_of: dict[str, set[str]] = defaultdict(set)
    counts: Counter = Counter()
    for module, _, _ in docs:
        top = module.split(".")[0]
        if not top.startswith("_"):
            modules_of[top].add(module)
            counts[top] += 1
    labels = sorted([t for t, _ in counts.most_common() if len(modules_of[t]) >= MIN_MODULES][:LABELS_WANTED])
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    per_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for module, header, doc in docs:
        top = module.split(".")[0]
        if top not in labels:
            continue
        text = _clean(doc, _names_in(module, header) | set(labels))
        if TEXT_WORDS[0] <= len(text.split()) <= TEXT_WORDS[1] and text.casefold() not in seen:
            seen.add(text.casefold())
            per_label[top].append((module, text))
    for label in labels:
        split_of = _assign(Counter(module for module, _ in per_label[label]))
        for module, text in per_label[label]:
            rows[split_of[module]].append({"text": text, "label": label, "module": module})
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=labels),
                                  "module": datasets.Value("string")})
    out = datasets.DatasetDict()
    for split, chosen in rows.items():
        random.Random(f"stdlib-topic-{split}").shuffle(chosen)
        out[split] = datasets.Dataset.from_dict(
            {"text": [r["text"] for r in chosen], "label": [labels.index(r["label"]) for r in chosen],
             "module": [r["module"] for r in chosen]}, features=features)
    return out


def topic_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the built stdlib-topic lives: `cache_dir`, else $GREENCORE_CACHE, else ~/.cache/greencore."""
    base = cache_dir or os.environ.get("GREENCORE_CACHE") or Path.home() / ".cache" / "greencore"
    return Path(base) / f"stdlib-topic-py{platform.python_version()}-v{TOPIC_BUILDER_VERSION}"


def load_stdlib_topic(cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """Load the cached build, building it first if needed."""
    return load_cached(topic_cache_path(cache_dir), build_stdlib_topic)
