"""`stdlib-tldr`: summarisation pairs built from the docstrings of the running Python's standard library.

Each function, class or module docstring gives one pair: the target is its summary line (first paragraph) and the
source is its qualified name and signature followed by the rest of the docstring. Built with `ast` (no imports
run); tests, vendored code and caches are skipped; splits are by top-level module, so no module is in two splits.
The build is cached under `$GREENCORE_CACHE` (or ~/.cache/greencore), published atomically by a rename.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import random
import re
import shutil
import sysconfig
import tempfile
import tokenize
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import datasets

__all__ = ["BUILDER_VERSION", "DocPair", "build_stdlib_tldr", "stdlib_cache_path"]

SPLITS = ("train", "validation", "test")
FEATURES = datasets.Features({"source": datasets.Value("string"), "target": datasets.Value("string")})

BUILDER_VERSION = 1
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "_vendor",
                       "vendor", "_bundled", "lib-dynload"})
SUMMARY_WORDS = (4, 30)
BODY_WORDS = (12, 300)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
_LEGAL = re.compile(r"copyright|all rights reserved|\blicen[cs]e[ds]?\b", re.I)
_BOILERPLATE = re.compile(r"\bxxx\b|\btodo\b|>>>|^(deprecated|see|same as|alias for)\b", re.I)
_STDLIB_FEATURES = datasets.Features({**FEATURES, "module": datasets.Value("string")})
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class DocPair:
    """One stdlib-tldr example: `target` is a docstring's summary, `source` a header and the rest of the docstring
    (`body`, kept apart for deduplication)."""

    module: str
    source: str
    target: str
    body: str


def _source_files(root: Path, modules: Sequence[str] | None) -> list[Path]:
    """The .py files of `modules` (dotted names under `root`; all of it if None), skipping tests and vendored code."""
    if modules is None:
        starts = [root]
    else:
        starts = []
        for name in modules:
            base = root.joinpath(*name.split("."))
            found = [p for p in (base, base.with_name(base.name + ".py")) if p.exists()]
            if not found:
                raise ValueError(f"module {name!r} not found under {root}: pass dotted names of modules or packages "
                                 f"there, e.g. 'json' or 'email.mime'")
            starts.extend(found)
    files: set[Path] = set()
    for start in starts:
        if start.is_file():
            files.add(start)
            continue
        for folder, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-")]
            files.update(Path(folder, f) for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _header(node: ast.AST, qualname: str) -> str:
    if isinstance(node, ast.ClassDef):
        return f"class {qualname}"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{qualname}({ast.unparse(node.args)}){returns}"


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    """(header, docstring) for the module and every class and function in it, in source order."""
    doc = ast.get_docstring(tree)
    if doc:
        yield f"module {module}", doc

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _DEFS):
                qualname = f"{prefix}.{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    yield _header(child, qualname), doc
                yield from visit(child, qualname)
            elif isinstance(child, ast.stmt):
                yield from visit(child, prefix)

    yield from visit(tree, module)


def _pair(module: str, header: str, doc: str) -> DocPair | None:
    """The (body -> summary) pair of a docstring, or None when it fails the length and boilerplate filters.

    The summary is the first paragraph (PEP 257's summary line, sometimes wrapped), the body the paragraphs after it;
    both have their whitespace collapsed to single spaces.
    """
    summary, *rest = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
    summary, body = " ".join(summary.split()), " ".join("".join(rest).split())
    if not SUMMARY_WORDS[0] <= len(summary.split()) <= SUMMARY_WORDS[1]:
        return None
    if not BODY_WORDS[0] <= len(body.split()) <= BODY_WORDS[1]:
        return None
    if _SIGNATURE.match(summary) or _BOILERPLATE.search(summary) or _LEGAL.search(summary) or summary.endswith(":"):
        return None
    if _LEGAL.search(body):
        return None
    return DocPair(module=module, source=f"{header}: {body}", target=summary, body=body)


def _extract(root: Path, modules: Sequence[str] | None) -> list[DocPair]:
    """All filtered pairs under `root`, deduplicated by target and by body (first occurrence wins), in file order."""
    pairs: list[DocPair] = []
    seen_targets: set[str] = set()
    seen_bodies: set[str] = set()
    for path in _source_files(root, modules):
        try:
            with tokenize.open(path) as f:
                tree = ast.parse(f.read(), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few data files in the stdlib are not valid Python for this interpreter
        module = _module_name(path, root)
        for header, doc in _docstrings(tree, module):
            pair = _pair(module, header, doc)
            if pair is None or pair.target.casefold() in seen_targets or pair.body.casefold() in seen_bodies:
                continue
            seen_targets.add(pair.target.casefold())
            seen_bodies.add(pair.body.casefold())
            pairs.append(pair)
    return pairs


def _split_of_modules(pairs: Sequence[DocPair]) -> dict[str, str]:
    """Top-level module -> split: modules in sha256 order, cut at 80% / 90% of the cumulative pair count.

    A module goes to the split its midpoint falls in, so no module straddles two splits.
    """
    sizes = Counter(p.module.split(".")[0] for p in pairs)
    total = sum(sizes.values())
    done = 0
    splits: dict[str, str] = {}
    for module in sorted(sizes, key=lambda m: hashlib.sha256(m.encode()).hexdigest()):
        middle = (done + sizes[module] / 2) / total
        splits[module] = "train" if middle < 0.8 else "validation" if middle < 0.9 else "test"
        done += sizes[module]
    return splits


def build_stdlib_tldr(root: str | os.PathLike | None = None, *, modules: Sequence[str] | None = None
                      ) -> datasets.DatasetDict:
    """Build stdlib-tldr from the Python sources under `root` (default: the running Python's standard library).

    `modules` restricts the build to some dotted module/package names under `root` (tests use it to build fast).
    Each split is shuffled with a fixed seed, so its first rows are a representative sample (see `max_examples`).
    """
    root = Path(root if root is not None else sysconfig.get_paths()["stdlib"]).resolve()
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory: pass the folder that holds the Python sources")
    pairs = _extract(root, modules)
    split_of = _split_of_modules(pairs)
    rows: dict[str, list[DocPair]] = {split: [] for split in SPLITS}
    for pair in pairs:
        rows[split_of[pair.module.split(".")[0]]].append(pair)
    out = datasets.DatasetDict()
    for split, chosen in rows.items():
        random.Random(f"stdlib-tldr-{split}").shuffle(chosen)
        columns = {"source": [p.source for p in chosen], "target": [p.target for p in chosen],
                   "module": [p.module for p in chosen]}
        out[split] = datasets.Dataset.from_dict(columns, features=_STDLIB_FEATURES)
    return out


def stdlib_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the built stdlib-tldr lives: `cache_dir`, else $GREENCORE_CACHE, else ~/.cache/greencore."""
    base = cache_dir or os.environ.get("GREENCORE_CACHE") or Path.home() / ".cache" / "greencore"
    return Path(base) / f"stdlib-tldr-py{platform.python_version()}-v{BUILDER_VERSION}"


def load_stdlib_tldr(cache_dir: str | os.PathLike | None) -> datasets.DatasetDict:
    """Load the cached build, building it first if needed."""
    return load_cached(stdlib_cache_path(cache_dir), build_stdlib_tldr)


def load_cached(path: Path, build: Callable[[], datasets.DatasetDict]) -> datasets.DatasetDict:
    """The data set saved at `path`, built by `build()` and published there atomically (by a rename) if missing."""
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent)
        try:
            built = build()
            datasets.disable_progress_bars()
            try:
                built.save_to_disk(tmp)
            finally:
                datasets.enable_progress_bars()
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published cache is an ordinary folder
            try:
                os.replace(tmp, path)
            except OSError:
                if not path.is_dir():  # otherwise another process published the same build first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))
