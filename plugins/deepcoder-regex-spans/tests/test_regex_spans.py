import deepcoder_regex_spans
import pytest

from deepcoder_core.plugins import PluginError, PluginManager
from deepcoder_core.protocols import SpanDetector, SpanType

R, A, OBS, ANS, OTHER = (
    SpanType.REASONING,
    SpanType.ACTION,
    SpanType.OBSERVATION,
    SpanType.ANSWER,
    SpanType.OTHER,
)


@pytest.fixture
def manager():
    manager = PluginManager()
    manager.add(deepcoder_regex_spans, name="deepcoder-regex-spans")
    return manager


@pytest.fixture
def regex(manager):
    return manager.build("span_detector", "regex")


def cut(detector, text):
    spans = detector.detect(text)
    assert spans[0].start == 0 and spans[-1].end == len(text)
    assert all(a.end == b.start for a, b in zip(spans, spans[1:], strict=False))
    return [(text[s.start : s.end], s.type) for s in spans]


def test_is_a_span_detector(regex):
    assert isinstance(regex, SpanDetector)


def test_react_markers_open_spans_until_the_next_one(regex):
    text = (
        "Question: add 2 and 3\n"
        "Thought 1: I will compute it.\n"
        "Action 1: python\nAction Input 1: print(2+3)\n"
        "Observation 1: 5\n"
        "Final Answer: 5"
    )
    assert cut(regex, text) == [
        ("Question: add 2 and 3\n", OTHER),
        ("Thought 1: I will compute it.\n", R),
        ("Action 1: python\nAction Input 1: print(2+3)\n", A),
        ("Observation 1: 5\n", OBS),
        ("Final Answer: 5", ANS),
    ]


def test_fireact_finish_is_the_answer(regex):
    text = "Thought: done.\nAction: finish[Paris]"
    assert cut(regex, text)[-1] == ("Action: finish[Paris]", ANS)


def test_think_block_is_never_cut_and_the_reply_after_it_is_the_answer(regex):
    text = "<think>\nAction: maybe not\nThought: hmm\n</think>\n\nThe answer is 4."
    assert cut(regex, text) == [
        ("<think>\nAction: maybe not\nThought: hmm\n</think>\n\n", R),
        ("The answer is 4.", ANS),
    ]


def test_unmarked_text_between_think_and_an_action_is_the_thought(regex):
    text = "<think>x</think>\nI will test it.\nAction: python\nAction Input: 1"
    kinds = cut(regex, text)
    assert kinds[0] == ("<think>x</think>\nI will test it.\n", R)
    assert kinds[1][1] == A


def test_unclosed_think_runs_to_the_end_with_lower_confidence(regex):
    spans = regex.detect("<think>cut off by the token limit")
    assert [s.type for s in spans] == [R]
    assert spans[0].confidence < 0.99


def test_markers_inside_code_fences_stay_in_the_action(regex):
    text = (
        "Action: python\nAction Input:\n```python\nprint('Observation: fake')\n"
        "Output: 3\nQuestion: = 1\n```\nObservation: real"
    )
    assert cut(regex, text) == [
        (text[: text.index("Observation: real")], A),
        ("Observation: real", OBS),
    ]


def test_a_fence_that_would_swallow_a_marker_is_not_a_fence(regex):
    text = "Observation: ```\nerror\nThought: retry\nAction: python\nAction Input: ```x```"
    kinds = [k for _, k in cut(regex, text)]
    assert kinds == [OBS, R, A]


def test_output_lines_are_observations_only_after_an_action(regex):
    prompt = "Question: sum a list\nInput: [1, 2]\nOutput: 3\n"
    assert cut(regex, prompt) == [(prompt, OTHER)]
    text = "Action: python\nAction Input: print(3)\nOutput: 3\n"
    assert cut(regex, text)[-1] == ("Output: 3\n", OBS)


def test_analysis_phrases_start_reasoning_after_an_observation_only(regex):
    text = "Observation: 5\nLet me check the sign.\nFinal Answer: 5\nI think that is it."
    assert cut(regex, text) == [
        ("Observation: 5\n", OBS),
        ("Let me check the sign.\n", R),
        ("Final Answer: 5\nI think that is it.", ANS),
    ]


def test_tool_call_and_response_tags(regex):
    text = '<tool_call>\n{"name": "f"}\n</tool_call>'
    assert cut(regex, text) == [(text, A)]
    assert cut(regex, "<tool_response>\n1\n</tool_response>")[0][1] == OBS


def test_confidence_follows_the_rule(regex):
    spans = regex.detect("some preamble\nThought: x\nLet me")
    assert spans[0].confidence == 0.5  # leading fill
    assert spans[1].confidence == pytest.approx(0.97)


def test_pattern_file_option(manager, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "leading: {type: reasoning, confidence: 0.4}\n"
        "markers:\n  - {type: action, pattern: 'CALL\\b', confidence: 0.9}\n"
    )
    detector = manager.build("span_detector", "regex", patterns=str(path))
    assert cut(detector, "think first\nCALL f(1)") == [("think first\n", R), ("CALL f(1)", A)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("markers:\n  - {type: nonsense, pattern: 'x'}\n", "unknown span type 'nonsense'"),
        ("markers:\n  - {type: action, pattern: '(unclosed'}\n", "invalid regular expression"),
        ("markers: [\n", "invalid YAML"),
    ],
)
def test_bad_pattern_files_name_the_problem(manager, tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(deepcoder_regex_spans.PatternError, match=message) as info:
        manager.build("span_detector", "regex", patterns=str(path))
    assert str(path) in str(info.value)


def test_missing_pattern_file(manager, tmp_path):
    with pytest.raises(deepcoder_regex_spans.PatternError, match="cannot read pattern file"):
        manager.build("span_detector", "regex", patterns=str(tmp_path / "none.yaml"))
    with pytest.raises(PluginError, match="rejected its options"):
        manager.build("span_detector", "regex", nonsense=1)
