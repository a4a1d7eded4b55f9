import json
import os

import deepcoder_retriever
import pytest
from deepcoder_retriever import Retriever, tokenize

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import Tool


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory):
    """One standard-library index for the module (built once, ~1 s)."""
    retriever = Retriever(cache_dir=str(tmp_path_factory.mktemp("cache")))
    retriever.load()
    return retriever


def test_registers_the_retrieve_tool(tmp_path):
    manager = PluginManager()
    manager.add(deepcoder_retriever, name="deepcoder-retriever")
    tool = manager.build("tool", "retrieve", k=2, cache_dir=str(tmp_path))
    assert isinstance(tool, Tool)
    assert tool.name == "retrieve" and "standard library" in tool.description
    assert tool.k == 2


@pytest.mark.parametrize(
    ("query", "title"),
    [
        ("greatest common divisor", "math.gcd"),
        ("push item onto heap", "heapq.heappush"),
        ("permutations of iterable", "itertools.permutations"),
        ("sort a list with a key function", "list.sort"),
    ],
)
def test_finds_standard_library_passages(stdlib, query, title):
    observation = stdlib.run(query, timeout=5)
    assert observation.ok
    results = observation.meta["results"]
    assert results[0]["title"] == title
    assert results[0]["source"] == f"pydoc:{title}"
    assert len(results) == 3  # default k
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert observation.text.startswith(f"[1] {title} (pydoc:{title})\n")


def test_json_input_and_k(stdlib):
    observation = stdlib.run(json.dumps({"query": "least common multiple", "k": 1}), timeout=5)
    assert [r["title"] for r in observation.meta["results"]] == ["math.lcm"]


def test_empty_and_unmatched_queries(stdlib):
    assert not stdlib.run("   ", timeout=5).ok
    observation = stdlib.run("zzzqqqxxx", timeout=5)
    assert observation.ok and observation.meta["results"] == []
    assert "no passages match" in observation.text


def test_index_is_cached_and_rebuilt_when_documents_change(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    note = docs / "notes.md"
    note.write_text("# Flux\n\nThe flux capacitor needs 1.21 gigawatts.\n\nUnrelated paragraph.\n")
    (docs / "image.png").write_bytes(b"\x89PNG")  # not a document: ignored
    options = {"docs_dirs": [str(docs)], "include_stdlib": False, "cache_dir": str(tmp_path / "c")}

    first = Retriever(**options)
    result = first.run("flux capacitor", timeout=5)
    assert first.rebuilt
    assert result.meta["results"][0]["source"] == "docs/notes.md#1"
    assert "gigawatts" in result.text

    first_path = first.index_path
    second = Retriever(**options)
    second.load()
    assert not second.rebuilt and second.index_path == first_path

    note.write_text("# Flux\n\nThe flux capacitor now needs 2 terawatts.\n")
    os.utime(note, ns=(1, 1))  # a different mtime even on coarse clocks
    third = Retriever(**options)
    assert third.index_path != first_path
    assert "terawatts" in third.run("flux capacitor", timeout=5).text
    assert third.rebuilt


def test_bad_options_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        Retriever(docs_dirs=[str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="nothing to index"):
        Retriever(include_stdlib=False)


def test_tokenize_splits_snake_case_and_drops_stopwords():
    assert tokenize("The bisect_left of a list") == ["bisect_left", "bisect", "left", "list"]


def test_concurrent_first_queries_build_one_index(tmp_path):
    import threading

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Sliding windows keep a running sum.\n\nTries store prefixes.\n")
    retriever = Retriever(docs_dirs=[str(docs)], include_stdlib=False, cache_dir=str(tmp_path))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(retriever.run("prefix tries", timeout=5)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.meta["results"][0]["source"] for r in results] == ["docs/a.txt#1"] * 4
    assert [p.name for p in (tmp_path / "retriever").iterdir()] == [retriever.index_path.name]
