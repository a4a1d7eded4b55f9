import deepcoder_structured_spans
import pytest

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import Span, SpanDetector, SpanType
from deepcoder_core.spans import Segment, parse_record

R, A, OBS, ANS, OTHER = (
    SpanType.REASONING,
    SpanType.ACTION,
    SpanType.OBSERVATION,
    SpanType.ANSWER,
    SpanType.OTHER,
)


@pytest.fixture
def structured():
    manager = PluginManager()
    manager.add(deepcoder_structured_spans, name="deepcoder-structured-spans")
    return manager.build("span_detector", "structured")


def typed(segment, spans):
    return [(segment.text[s.start : s.end], s.type) for s in spans]


def test_is_a_span_detector_with_segments(structured):
    assert isinstance(structured, SpanDetector)
    assert hasattr(structured, "detect_segments")


def test_our_step_structure_is_used_exactly(structured):
    record = {
        "schema": 1,
        "id": "t1",
        "problem_id": "p1",
        "messages": [
            {"role": "system", "content": "Format: Thought: ... Action: ..."},
            {"role": "user", "content": "Write add(a, b)."},
        ],
        "steps": [
            {
                # no "Thought:" label and a marker-looking line inside the action input
                "thought": "I will test it first.",
                "action": {"tool": "python", "input": "print('Final Answer: no')"},
                "observation": "Final Answer: no",
                "raw": "I will test it first.\nAction: python\nAction Input: print('Final Answer: no')",
                "reasoning": None,
            },
            {
                "thought": "Done.",
                "action": None,
                "observation": None,
                "raw": "Thought: Done.\nFinal Answer: def add(a, b): return a + b",
                "reasoning": None,
            },
        ],
        "final_answer": "def add(a, b): return a + b",
        "success": True,
    }
    parsed = parse_record(record)
    spans = structured.detect_segments(parsed.segments)
    assert [s.type for s in spans[0]] == [OTHER]  # the system prompt mentions Thought:
    assert typed(parsed.segments[2], spans[2]) == [
        ("I will test it first.\n", R),
        ("Action: python\nAction Input: print('Final Answer: no')", A),
    ]
    assert typed(parsed.segments[3], spans[3]) == [("Observation: Final Answer: no", OBS)]
    assert typed(parsed.segments[4], spans[4]) == [
        ("Thought: Done.\n", R),
        ("Final Answer: def add(a, b): return a + b", ANS),
    ]
    assert all(s.confidence == 1.0 for seg in spans[2:] for s in seg)


def test_roles_and_format_kinds():
    detector = deepcoder_structured_spans.StructuredSpanDetector()
    segments = [
        Segment("user", "Task: do it", 0, prompt=True),
        Segment("assistant", "Let me look.", 1),
        Segment("assistant", "search", 1, field="tool_call.name", kind=A),
        Segment("tool", "found", 2, kind=OBS),
        Segment("user", "Observation: more", 3),
        Segment("assistant", "It is 4.", 4),
    ]
    kinds = [[s.type for s in spans] for spans in detector.detect_segments(segments)]
    assert kinds == [[OTHER], [R], [A], [OBS], [OBS], [ANS]]


def test_react_text_without_roles(structured):
    text = "Question: q\nThought 1: t\nAction 1: Search[x]\nObservation 1: o\nAction 2: Finish[y]"
    spans = structured.detect(text)
    assert [(text[s.start : s.end], s.type) for s in spans] == [
        ("Question: q\n", OTHER),
        ("Thought 1: t\n", R),
        ("Action 1: Search[x]\n", A),
        ("Observation 1: o\n", OBS),
        ("Action 2: Finish[y]", ANS),
    ]


def test_given_parts_win_over_keywords(structured):
    segment = Segment("assistant", "Action: x", 1, parts=(Span(0, 9, R),))
    assert [s.type for s in structured.detect_segments([segment])[0]] == [R]
