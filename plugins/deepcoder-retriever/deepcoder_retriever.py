"""The ``retrieve`` tool: BM25 search over Python documentation, built offline.

The knowledge base is the standard library's own documentation, rendered with ``pydoc``
for builtins and the modules the python tool allows (one passage per function, class,
method and constant, long ones split at blank lines), plus any folders of user documents
(``docs_dirs``: .md .txt .rst .py files, split into passages at blank lines). Ranking is
Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and
Beyond") as implemented by ``bm25s``:

    score(D, Q) = sum_{q in Q} IDF(q) * f(q, D) * (k1 + 1) / (f(q, D) + k1 * (1 - b + b * |D| / avgdl))

The index is cached on disk under ``<cache_dir>/retriever/<fingerprint>/``; the fingerprint
covers the Python version, the module list, every user document's path, size and mtime and
the passage size, so a change to any source builds a fresh index.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from deepcoder_core import PURE_MODULES, Observation, hookimpl

DEFAULT_MODULES = ("builtins", *PURE_MODULES)  # the modules the python tool may import
DOC_SUFFIXES = (".md", ".txt", ".rst", ".py")
INDEX_VERSION = 1  # bump when passages or tokens change shape
_WORD = re.compile(r"[a-z0-9_]+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have if in into is it its of on or that the their "
    "then there these this to was were will with which you your how what do does can i".split()
)
_CONSTANT_TYPES = (int, float, str, bytes, tuple, frozenset, bool)


def tokenize(text: str) -> list[str]:
    """Lower-case words; ``snake_case`` names also give their parts (``bisect_left`` -> bisect, left)."""
    tokens = []
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or len(word) < 2:
            continue
        tokens.append(word)
        if "_" in word.strip("_"):
            tokens.extend(p for p in word.split("_") if len(p) > 1 and p not in _STOPWORDS)
    return tokens


def _split(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at most ``max_chars`` (longer paragraphs by lines)."""
    pieces: list[str] = []
    current = ""
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        while len(paragraph) > max_chars:
            cut = paragraph.rfind("\n", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(paragraph[:cut])
            paragraph = paragraph[cut:].lstrip("\n")
        if current and len(current) + len(paragraph) + 2 > max_chars:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current.strip():
        pieces.append(current)
    return [p.strip("\n") for p in pieces if p.strip()]


def _own(obj: Any, module: str) -> bool:
    """Whether ``obj`` belongs to ``module`` (its C accelerator ``_module`` counts)."""
    owner = getattr(obj, "__module__", None)
    return owner is None or owner.lstrip("_") == module


def _render(obj: Any, name: str) -> str:
    import pydoc

    try:
        return pydoc.plaintext.document(obj, name)  # type: ignore[attr-defined]  # pydoc's text renderer, untyped
    except Exception:  # some C objects confuse pydoc: fall back to the docstring
        return f"{name}\n    {inspect.getdoc(obj) or ''}"


def stdlib_passages(modules: tuple[str, ...] | list[str], max_chars: int) -> list[dict[str, str]]:
    """One passage per documented public name of each module (classes: one per own method)."""
    passages: list[dict[str, str]] = []

    def add(title: str, text: str) -> None:
        for n, piece in enumerate(_split(text, max_chars)):
            suffix = f" (part {n + 1})" if n else ""
            passages.append({"source": f"pydoc:{title}", "title": title + suffix, "text": piece})

    with warnings.catch_warnings():
        # typing.io / typing.re and friends warn on access; their documentation is still fine
        warnings.simplefilter("ignore", DeprecationWarning)
        for module_name in modules:
            _module_passages(module_name, add, max_chars)
    return passages


def _module_passages(module_name: str, add: Any, max_chars: int) -> None:
    module = importlib.import_module(module_name)
    prefix = "" if module_name == "builtins" else f"{module_name}."
    if module_name != "builtins" and module.__doc__:
        add(module_name, f"module {module_name}\n\n{inspect.cleandoc(module.__doc__)}")
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        title = f"{prefix}{name}"
        if inspect.ismodule(obj):
            continue
        if isinstance(obj, _CONSTANT_TYPES):
            add(title, f"{title} = {obj!r}"[:max_chars])
        elif not _own(obj, module_name):
            continue
        elif inspect.isclass(obj):
            # the class itself without the inherited listing; each own method is a passage
            header = _render(obj, name)
            for marker in ("\n |  Method", "\n |  Data descriptors", "\n |  ----"):
                header = header.split(marker, 1)[0]
            add(title, header.replace("\n |  ", "\n").replace("\n | ", "\n"))
            for member_name, member in sorted(vars(obj).items()):
                if member_name.startswith("_") or not (
                    callable(member) or isinstance(member, classmethod | staticmethod | property)
                ):
                    continue
                bound = getattr(obj, member_name, member)
                if inspect.getdoc(bound):
                    add(f"{title}.{member_name}", _render(bound, member_name))
        elif callable(obj):
            add(title, _render(obj, name))


def document_passages(folder: Path, max_chars: int) -> list[dict[str, str]]:
    passages = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in DOC_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(folder).as_posix()
        for n, piece in enumerate(_split(text, max_chars)):
            passages.append({"source": f"{folder.name}/{rel}#{n + 1}", "title": rel, "text": piece})
    return passages


def default_cache_dir() -> Path:
    """``$DEEPCODER_PATHS__CACHE`` (the config's ``paths.cache``) or ``~/.cache/deepcoder``."""
    return Path(os.environ.get("DEEPCODER_PATHS__CACHE", "~/.cache/deepcoder")).expanduser()


class Retriever:
    """Search Python documentation (standard library and your own documents) with BM25."""

    name = "retrieve"
    description = (
        "Search the Python standard library documentation (builtins, math, re, itertools, "
        "collections, functools, heapq, bisect, string, json, statistics, ...) and return "
        "the most relevant passages. Input: a search query such as `heapq push pop smallest`."
    )

    def __init__(
        self,
        k: int = 3,
        docs_dirs: list[str] | str | None = None,
        modules: list[str] | None = None,
        include_stdlib: bool = True,
        cache_dir: str | None = None,
        max_chars: int = 1200,
    ) -> None:
        if isinstance(docs_dirs, str):
            docs_dirs = [docs_dirs]
        self.k = int(k)
        self.docs_dirs = [Path(d).expanduser() for d in (docs_dirs or [])]
        for folder in self.docs_dirs:
            if not folder.is_dir():
                raise ValueError(f"retrieve: docs_dirs entry {folder} is not a folder")
        self.modules = list(modules) if modules is not None else list(DEFAULT_MODULES)
        if not include_stdlib:
            self.modules = []
        if not self.modules and not self.docs_dirs:
            raise ValueError("retrieve: nothing to index (no modules and no docs_dirs)")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.max_chars = int(max_chars)
        self.rebuilt = False  # whether this instance had to build its index
        self._lock = threading.Lock()
        self._bm25: Any = None
        self._passages: list[dict[str, str]] = []

    # ------------------------------------------------------------------ index
    def fingerprint(self) -> str:
        """Hash of everything the index is built from; a new value means a new index."""
        docs = []
        for folder in self.docs_dirs:
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in DOC_SUFFIXES:
                    stat = path.stat()
                    docs.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        blob = json.dumps(
            {
                "version": INDEX_VERSION,
                "python": sys.version,
                "modules": self.modules,
                "docs": docs,
                "max_chars": self.max_chars,
            },
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def index_path(self) -> Path:
        return self.cache_dir / "retriever" / self.fingerprint()

    def load(self) -> None:
        """Load the cached index for the current sources, building it first if needed (once)."""
        import bm25s

        with self._lock:
            if self._bm25 is not None:
                return  # another thread loaded it while this one waited
            path = self.index_path
            if not (path / "passages.json").exists():
                self._build(path)
                self.rebuilt = True
            bm25 = bm25s.BM25.load(str(path), show_progress=False)
            self._passages = json.loads((path / "passages.json").read_text(encoding="utf-8"))
            self._bm25 = bm25  # published last: a thread that sees it also sees the passages

    def _build(self, path: Path) -> None:
        import bm25s

        passages = stdlib_passages(self.modules, self.max_chars) if self.modules else []
        for folder in self.docs_dirs:
            passages += document_passages(folder, self.max_chars)
        if not passages:
            raise ValueError("retrieve: the documents gave no passages to index")
        bm25 = bm25s.BM25()
        bm25.index(
            [tokenize(f"{p['title']} {p['text']}") or ["_empty_"] for p in passages],
            show_progress=False,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # build in a temporary folder and rename: concurrent builders never see half an index
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            bm25.save(str(tmp), show_progress=False)
            (tmp / "passages.json").write_text(json.dumps(passages), encoding="utf-8")
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / "passages.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ search
    def search(self, query: str, k: int | None = None) -> list[dict[str, Any]]:
        """The top ``k`` passages with a positive BM25 score, best first."""
        if self._bm25 is None:
            self.load()
        tokens = tokenize(query)
        if not tokens:
            return []
        k = max(1, min(int(k or self.k), len(self._passages)))
        documents, scores = self._bm25.retrieve([tokens], k=k, show_progress=False)
        return [
            {**self._passages[int(i)], "score": round(float(s), 3)}
            for i, s in zip(documents[0], scores[0], strict=True)
            if s > 0
        ]

    def run(self, input: str, *, timeout: float = 10.0, session: str | None = None) -> Observation:
        query, k = input.strip(), None
        if query.startswith("{"):
            try:
                data = json.loads(query)
            except json.JSONDecodeError:
                data = None
            if isinstance(data, dict) and isinstance(data.get("query"), str):
                query, k = data["query"], data.get("k")
        if not query:
            return Observation("retrieve needs a search query, e.g. `sort a list by key`", ok=False)
        try:
            results = self.search(query, k if isinstance(k, int) else None)
        except (OSError, ValueError) as exc:
            return Observation(f"retrieve failed: {exc}", ok=False)
        if not results:
            return Observation(f"no passages match {query!r}", ok=True, meta={"results": []})
        text = "\n\n".join(
            f"[{n}] {r['title']} ({r['source']})\n{r['text']}" for n, r in enumerate(results, 1)
        )
        meta = {"results": [{k: r[k] for k in ("source", "title", "score")} for r in results]}
        return Observation(text, ok=True, meta=meta)


@hookimpl
def register_tools(register):
    register("retrieve", Retriever)
