"""Summarisation data: the data sets greencore fine-tunes on, and their conversion to token ids and batches.

Every data set is a `datasets.DatasetDict` with splits train/validation/test and string columns `source` and `target`.
The default, `stdlib-tldr`, is built from the docstrings of the running Python's standard library, so tests, notebooks
and the app work without network access; `scitldr` and `dialogsum` come from the Hugging Face Hub; a local
.jsonl/.json/.csv file works too.

Prompts: a decoder-only model reads `{source} TL;DR: {target}<eos>` and is trained on the target tokens only (the prompt
is masked with -100); an encoder-decoder model reads `summarize: {source}` and is trained on `{target}<eos>`.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
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
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import datasets
import torch

if TYPE_CHECKING:  # only for annotations: importing transformers is slow
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DATASETS",
    "batches",
    "build_stdlib_tldr",
    "collate",
    "encode_examples",
    "eos_token_id",
    "load_summarization",
    "pad_batch",
    "pad_prompts",
    "pad_token_id",
    "prompt_for_generation",
    "stdlib_cache_path",
]

SPLITS = ("train", "validation", "test")
DATASETS: dict[str, str] = {
    "stdlib-tldr": "offline default: Python standard-library docstrings (body -> one-line summary), built locally",
    "scitldr": "allenai/scitldr, config Abstract: paper abstract -> one-sentence TL;DR (needs the Hugging Face Hub)",
    "dialogsum": "knkarthick/dialogsum: dialogue -> summary (needs the Hugging Face Hub)",
}
_HUB = {"scitldr": ("allenai/scitldr", "Abstract"), "dialogsum": ("knkarthick/dialogsum", None)}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
                  "dev": "validation", "test": "test"}
_LOCAL_SEED = 0
_FEATURES = datasets.Features({"source": datasets.Value("string"), "target": datasets.Value("string")})

# ---------------------------------------------------------------------------------------------------------------------
# stdlib-tldr

BUILDER_VERSION = 1
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "_vendor",
                       "vendor", "_bundled", "lib-dynload"})
SUMMARY_WORDS = (4, 30)
BODY_WORDS = (12, 300)
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
_LEGAL = re.compile(r"copyright|all rights reserved|\blicen[cs]e[ds]?\b", re.I)
_BOILERPLATE = re.compile(r"\bxxx\b|\btodo\b|>>>|^(deprecated|see|same as|alias for)\b", re.I)
_STDLIB_FEATURES = datasets.Features({**_FEATURES, "module": datasets.Value("string")})
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


def _load_stdlib_tldr(cache_dir: str | os.PathLike | None) -> datasets.DatasetDict:
    """Load the cached build, building it first if needed; the cache is published atomically by a rename."""
    path = stdlib_cache_path(cache_dir)
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent)
        try:
            pairs = build_stdlib_tldr()
            datasets.disable_progress_bars()
            try:
                pairs.save_to_disk(tmp)
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


# ---------------------------------------------------------------------------------------------------------------------
# Hub presets and local files


def _scitldr_row(example: dict) -> dict:
    """One row per abstract: its sentences joined, and its first (author-written) TL;DR."""
    return {"source": " ".join(example["source"]), "target": example["target"][0]}


def _dialogsum_row(example: dict) -> dict:
    return {"source": example["dialogue"], "target": example["summary"]}


_HUB_ROWS = {"scitldr": _scitldr_row, "dialogsum": _dialogsum_row}


def _load_hub(name: str, cache_dir: str | None) -> datasets.DatasetDict:
    """A hub preset converted to source/target columns; any failure to fetch it becomes a ValueError saying why."""
    repo, config = _HUB[name]
    try:
        raw = datasets.load_dataset(repo, config, cache_dir=cache_dir)
    except Exception as error:  # offline, missing repo, hub errors: all mean the same thing to the user
        raise ValueError(f"could not load {name!r} ({repo}) from the Hugging Face Hub: {error}. It needs network "
                         f"access or a copy in the datasets cache; offline, use 'stdlib-tldr' or a local "
                         f".jsonl/.csv file") from error
    convert = _HUB_ROWS[name]
    return datasets.DatasetDict({
        split: raw[split].map(convert, remove_columns=raw[split].column_names, features=_FEATURES) for split in SPLITS})


def _read_records(path: Path) -> list[dict]:
    """The rows of a .csv, .jsonl or .json file (a JSON list of objects, or JSON lines) as dicts."""
    try:
        return _parse_records(path)
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise ValueError(f"could not read data set {str(path)!r} ({type(error).__name__}: {error}); it must be a "
                         f"readable UTF-8 .jsonl, .json or .csv file") from error


def _parse_records(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number} is not valid JSON ({error}): write one JSON object "
                                     f"per line") from error
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} must hold JSON objects (one per row), e.g. {{\"source\": ..., \"target\": ...}}")
    return records


def _load_local(path: Path, source_field: str, target_field: str) -> datasets.DatasetDict:
    """A local file as train/validation/test: by its `split` column if it has one, else 80/10/10 by a seeded shuffle."""
    if not path.is_file():
        raise ValueError(f"file {path} does not exist: pass the path of a .jsonl, .json or .csv file")
    records = _read_records(path)
    if not records:
        raise ValueError(f"{path} holds no rows: a data set needs at least one (source, target) pair")
    available = sorted({key for record in records for key in record})
    for role, field in (("source_field", source_field), ("target_field", target_field)):
        if field not in available:
            raise ValueError(f"{path} has no field {field!r}; its fields are {available}: pass {role}= one of them")
    pairs = []
    for number, record in enumerate(records, 1):
        values = (record.get(source_field), record.get(target_field))
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise ValueError(f"row {number} of {path} needs non-empty text in {source_field!r} and {target_field!r}, "
                             f"got {values!r}: fix or remove that row")
        pairs.append(values)
    if "split" in available:
        assigned = []
        for number, record in enumerate(records, 1):
            split = _SPLIT_ALIASES.get(str(record.get("split", "")).strip().lower())
            if split is None:
                raise ValueError(f"row {number} of {path} has split {record.get('split')!r}: use train, validation "
                                 f"or test (or remove the split column to split 80/10/10 automatically)")
            assigned.append(split)
    else:
        random.Random(_LOCAL_SEED).shuffle(pairs)
        n_held = len(pairs) // 10
        assigned = ["train"] * (len(pairs) - 2 * n_held) + ["validation"] * n_held + ["test"] * n_held
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"source": [s for (s, _), a in zip(pairs, assigned) if a == split],
             "target": [t for (_, t), a in zip(pairs, assigned) if a == split]}, features=_FEATURES)
        for split in SPLITS})


def _limit(data: datasets.DatasetDict, max_examples: Mapping[str, int] | int) -> datasets.DatasetDict:
    limits = {split: max_examples for split in data} if isinstance(max_examples, int) else dict(max_examples)
    unknown = sorted(set(limits) - set(data))
    if unknown:
        raise ValueError(f"max_examples names unknown splits {unknown}: use {list(data)}")
    for split, limit in limits.items():
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"max_examples[{split!r}] = {limit!r}: it must be a non-negative integer")
        data[split] = data[split].select(range(min(limit, len(data[split]))))
    return data


def load_summarization(name: str = "stdlib-tldr", *, source_field: str | None = None, target_field: str | None = None,
                       max_examples: Mapping[str, int] | int | None = None, cache_dir: str | None = None
                       ) -> datasets.DatasetDict:
    """Load a summarisation data set as a DatasetDict with train/validation/test and `source`/`target` columns.

    `name` is a key of `DATASETS` or the path of a .jsonl/.json/.csv file (whose text columns `source_field` and
    `target_field` name, default "source"/"target"). `max_examples` keeps the first rows of every split (an int) or
    of the named splits (a dict). `cache_dir` is where stdlib-tldr is cached, or the hub data sets' datasets cache.
    """
    if name.lower().endswith(_LOCAL_SUFFIXES):
        data = _load_local(Path(name).expanduser(), source_field or "source", target_field or "target")
    elif name in DATASETS:
        if source_field is not None or target_field is not None:
            raise ValueError(f"source_field/target_field only apply to local files; {name!r} has fixed columns")
        data = _load_stdlib_tldr(cache_dir) if name == "stdlib-tldr" else _load_hub(name, cache_dir)
    else:
        raise ValueError(f"unknown data set {name!r}: use one of {sorted(DATASETS)}, or the path of a .jsonl, .json "
                         f"or .csv file with source/target columns")
    return data if max_examples is None else _limit(data, max_examples)


# ---------------------------------------------------------------------------------------------------------------------
# Prompts, token ids and batches

PROMPT_SEPARATOR = " TL;DR:"
ENCODER_PREFIX = "summarize:"
IGNORE_INDEX = -100


def eos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that ends a summary: the tokenizer's eos token, else its [SEP] token (BERT-style tokenizers)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"{type(tokenizer).__name__} has neither an eos nor a sep token: set tokenizer.eos_token")


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, else its eos token (GPT-2-style tokenizers have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id(tokenizer)


def _ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []


def _special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a single text (e.g. [CLS] and [SEP], or none and </s>)."""
    bare = _ids(tokenizer, ["summary"])[0]
    full = tokenizer("summary")["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


@dataclass(frozen=True)
class _Template:
    """A prompt is head + prefix + source (cut to fit) + suffix + tail."""

    head: list[int]
    prefix: list[int]
    suffix: list[int]
    tail: list[int]

    @property
    def fixed(self) -> int:
        return len(self.head) + len(self.prefix) + len(self.suffix) + len(self.tail)


def _template(tokenizer: PreTrainedTokenizerBase, is_encoder_decoder: bool) -> _Template:
    """Encoder-decoder: the tokenizer's own special tokens around `summarize: {source}`. Decoder-only: `{source}
    TL;DR:` with no special tokens except a leading bos when the tokenizer adds one by itself (OPT, Llama)."""
    head, tail = _special_affixes(tokenizer)
    if is_encoder_decoder:
        return _Template(head, _ids(tokenizer, [ENCODER_PREFIX])[0], [], tail)
    bos = head if tokenizer.bos_token_id is not None and head == [tokenizer.bos_token_id] else []
    return _Template(bos, [], _ids(tokenizer, [PROMPT_SEPARATOR])[0], [])


def _prompts(tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], *, is_encoder_decoder: bool,
             max_source_tokens: int) -> tuple[list[list[int]], int]:
    """Prompt ids for each source, each at most `max_source_tokens` long, and how many sources were cut to fit."""
    template = _template(tokenizer, is_encoder_decoder)
    budget = max_source_tokens - template.fixed
    if budget < 1:
        raise ValueError(f"max_source_tokens={max_source_tokens} leaves no room for the source: the prompt template "
                         f"alone takes {template.fixed} tokens, so use at least {template.fixed + 1}")
    prompts, n_truncated = [], 0
    for ids in _ids(tokenizer, sources):
        n_truncated += len(ids) > budget
        prompts.append(template.head + template.prefix + ids[:budget] + template.suffix + template.tail)
    return prompts, n_truncated


def encode_examples(tokenizer: PreTrainedTokenizerBase, dataset: datasets.Dataset | Mapping[str, Sequence[str]], *,
                    is_encoder_decoder: bool, max_source_tokens: int, max_target_tokens: int
                    ) -> tuple[list[dict], int]:
    """Token ids for training: rows {"input_ids", "labels", "index"} and the number of sources that were truncated.

    The prompt (at most `max_source_tokens` ids) is cut inside the source text, never in the target. An example whose
    `{target}<eos>` is longer than `max_target_tokens` is dropped rather than cut, since training on a cut summary
    that ends in eos would teach the model to stop mid-sentence; `index` is each row's position in `dataset`, so
    `len(dataset) - len(rows)` examples were dropped. Decoder-only rows have labels aligned with input_ids (prompt
    masked with -100); encoder-decoder rows have the encoder input as input_ids and `{target}<eos>` as labels.
    """
    if max_target_tokens < 2:
        raise ValueError(f"max_target_tokens={max_target_tokens}: it must be at least 2 (one token and eos)")
    sources, targets = list(dataset["source"]), list(dataset["target"])
    prompts, n_truncated = _prompts(tokenizer, sources, is_encoder_decoder=is_encoder_decoder,
                                    max_source_tokens=max_source_tokens)
    eos = eos_token_id(tokenizer)
    target_ids = _ids(tokenizer, targets if is_encoder_decoder else [" " + t for t in targets])
    rows = []
    for index, (prompt, target) in enumerate(zip(prompts, target_ids)):
        answer = target + [eos]
        if len(answer) > max_target_tokens:
            continue
        if is_encoder_decoder:
            rows.append({"input_ids": prompt, "labels": answer, "index": index})
        else:
            rows.append({"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer,
                         "index": index})
    return rows, n_truncated


def prompt_for_generation(tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], *, is_encoder_decoder: bool,
                          max_source_tokens: int) -> list[list[int]]:
    """The prompt ids a model generates a summary from: exactly the prompt part of `encode_examples`' rows
    (decoder-only: `{source} TL;DR:`, which the summary continues; encoder-decoder: the encoder input)."""
    return _prompts(tokenizer, sources, is_encoder_decoder=is_encoder_decoder, max_source_tokens=max_source_tokens)[0]


def pad_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]], *, is_encoder_decoder: bool
                ) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask for `model.generate`: decoder-only prompts are padded on the left, so every
    prompt ends where generation starts; encoder inputs are padded on the right."""
    if not prompts:
        raise ValueError("pad_prompts needs at least one prompt")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        start = 0 if is_encoder_decoder else width - len(prompt)
        input_ids[i, start:start + len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, start:start + len(prompt)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Mapping[str, Any]], *, pad_to: int | None = None
            ) -> dict[str, torch.Tensor]:
    """A training batch: input_ids (padded with the pad id), attention_mask and labels (padded with -100).

    Padding is on the right, to the longest row, or to `pad_to` for every tensor (a fixed sequence length for
    profiling). input_ids and labels are padded independently, so decoder-only rows stay aligned and encoder-decoder
    rows keep their own label length (the model derives its decoder inputs from the labels).
    """
    if not rows:
        raise ValueError("collate needs at least one row")
    input_width = max(len(r["input_ids"]) for r in rows)
    label_width = max(len(r["labels"]) for r in rows)
    if pad_to is not None:
        if max(input_width, label_width) > pad_to:
            raise ValueError(f"a row has {max(input_width, label_width)} tokens, more than pad_to={pad_to}: raise "
                             f"pad_to or lower max_source_tokens/max_target_tokens")
        input_width = label_width = pad_to
    input_ids = torch.full((len(rows), input_width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), input_width), dtype=torch.long)
    labels = torch.full((len(rows), label_width), IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        n_input, n_label = len(row["input_ids"]), len(row["labels"])
        input_ids[i, :n_input] = torch.tensor(row["input_ids"], dtype=torch.long)
        attention_mask[i, :n_input] = 1
        labels[i, :n_label] = torch.tensor(row["labels"], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_batch(tokenizer: PreTrainedTokenizerBase, batch: Mapping[str, torch.Tensor], multiple: int
              ) -> dict[str, torch.Tensor]:
    """A collated batch with every sequence width padded up to a multiple of `multiple` (pad id, mask 0, label -100).

    Fewer distinct shapes means fewer FLOPs measurements and profiles; padding changes no loss.
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple}: pad to a multiple of a positive number of tokens")
    fill = {"input_ids": pad_token_id(tokenizer), "attention_mask": 0, "labels": IGNORE_INDEX}
    return {key: torch.nn.functional.pad(t, (0, -t.shape[1] % multiple), value=fill.get(key, 0))
            for key, t in batch.items()}


def batches(tokenizer: PreTrainedTokenizerBase, rows: Sequence[Mapping[str, Any]], *, batch_size: int, shuffle: bool,
            seed: int, pad_to: int | None = None, drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches over `rows`, in a shuffled order that depends only on `seed` when `shuffle` is set."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: it must be a positive integer")
    order = list(range(len(rows)))
    if shuffle:
        random.Random(seed).shuffle(order)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield collate(tokenizer, [rows[i] for i in order[start:start + batch_size]], pad_to=pad_to)


def sample_batches(tokenizer: PreTrainedTokenizerBase, dataset: str = "stdlib-tldr", *, is_encoder_decoder: bool,
                   batch_size: int, seq_len: int, count: int = 1, seed: int = 0, max_target_tokens: int = 32
                   ) -> list[dict[str, torch.Tensor]]:
    """`count` training batches of exactly `seq_len` tokens from a data set's train split, for profiling and probing.

    Every batch has the same shape, so a profile made on one describes them all. Sources are cut to fit `seq_len`
    (decoder-only: prompt plus summary; encoder-decoder: the encoder input, with summaries padded to `seq_len` too).
    """
    if seq_len <= max_target_tokens and not is_encoder_decoder:
        raise ValueError(f"seq_len={seq_len} leaves no room for a source next to {max_target_tokens} summary tokens: "
                         f"use a seq_len above {max_target_tokens}")
    if count < 1 or batch_size < 1:
        raise ValueError(f"count={count} and batch_size={batch_size} must be positive")
    data = load_summarization(dataset)["train"]
    needed = count * batch_size
    rows, _ = encode_examples(tokenizer, data.select(range(min(len(data), 4 * needed))),
                              is_encoder_decoder=is_encoder_decoder,
                              max_source_tokens=seq_len if is_encoder_decoder else seq_len - max_target_tokens,
                              max_target_tokens=min(max_target_tokens, seq_len))
    if len(rows) < needed:
        raise ValueError(f"{dataset} gives {len(rows)} usable examples, fewer than {count} batches of {batch_size}")
    return list(batches(tokenizer, rows, batch_size=batch_size, shuffle=True, seed=seed, pad_to=seq_len,
                        drop_last=True))[:count]
