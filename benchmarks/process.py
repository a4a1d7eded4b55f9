"""Benchmark of `deepcoder process` on synthetic trajectories with the real Qwen3 tokenizer.

Prints JSON: trajectories per second of the whole stage (read, parse, detect, render with
the chat template, encode, align, filter, write the dataset), its time against the
tokenizer's own batch encoding of the same rendered texts (the floor; target <= 1.5x), the
speed-up with ``--num-proc 2``, the chat-template rendering against ``apply_chat_template``,
and the regex detector's token accuracy on flat text of our
format and of FireAct records (target >= 98%).

    flock /tmp/deepcoder-cpu.lock python benchmarks/process.py [--n 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepcoder_core.chat_template import ChatRenderer  # noqa: E402
from deepcoder_core.config import load_config  # noqa: E402
from deepcoder_core.encoding import PromptEncoder  # noqa: E402
from deepcoder_core.models import qwen3_tokenizer_path  # noqa: E402
from deepcoder_core.plugins import build  # noqa: E402
from deepcoder_core.process import fast_tokenizer, process  # noqa: E402
from deepcoder_core.spans import (  # noqa: E402
    build_messages,
    detect_spans,
    detector_accuracy,
    flatten,
    parse_record,
    prompt_end,
    render,
    template_supports_tools,
)
from tests.trajectory_factory import fireact, trajectory, write_jsonl  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic trajectories")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (medians are reported)")
    args = parser.parse_args()

    tokenizer_path = str(qwen3_tokenizer_path())
    tok = fast_tokenizer(tokenizer_path)
    records = [trajectory(i, seed=42) for i in range(args.n)]
    work = Path(tempfile.mkdtemp(prefix="bench-process-"))
    path = write_jsonl(work / "trajectories.jsonl", records)
    config = load_config(None, ["processing.successful_only=false", "processing.dedup=true"])

    def stage(num_proc: int | None, detector: str = "structured"):
        def run():
            return process(
                config,
                trajectories=path,
                out=work / f"out-{num_proc}-{detector}",
                tokenizer=tokenizer_path,
                detector=detector,
                num_proc=num_proc,
            )

        return run

    summary = stage(None)()  # warm: tokenizer, plugins, template compiled
    # the floor: the tokenizer encoding the very texts the stage encodes
    texts = [render(parse_record(r).segments, tok) for r in records]
    tools = template_supports_tools(tok)
    chats = [build_messages(parse_record(r).segments, tools=tools) for r in records]

    def naive():
        # what a straightforward script does: one record at a time, the tokenizer called per text
        structured = build("span_detector", "structured")
        for record in records:
            parsed = parse_record(record)
            detect_spans(structured, parsed.segments)
            text = tok.apply_chat_template(
                [{"role": s.role, "content": s.text} for s in parsed.segments], tokenize=False
            )
            tok(text, add_special_tokens=False, return_offsets_mapping=True)

    renderer = ChatRenderer(tok)
    figures = {
        "stage default (num_proc 0: one per core)": stage(None),
        "stage num_proc 1": stage(1),
        "stage num_proc 2": stage(2),
        "stage num_proc 1, regex detector": stage(1, "regex"),
        "tokenizer(texts)": lambda: tok(texts, add_special_tokens=False),
        "tokenizer(texts, return_offsets_mapping=True)": lambda: tok(
            texts, add_special_tokens=False, return_offsets_mapping=True
        ),
        "apply_chat_template(chats, tokenize=False)": lambda: tok.apply_chat_template(
            chats, tokenize=False
        ),
        "ChatRenderer (ours) on the same chats": lambda: renderer.render(chats),
        "apply_chat_template(chats, tokenize=True)": lambda: tok.apply_chat_template(
            chats, tokenize=True
        ),
    }
    # rounds interleave every figure, so machine noise hits them alike; medians are reported
    samples: dict[str, list[float]] = {name: [] for name in figures}
    for _ in range(args.repeat):
        for name, fn in figures.items():
            samples[name].append(timed(fn))
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    naive_seconds = timed(naive)
    floor = seconds["tokenizer(texts)"]
    default = seconds["stage default (num_proc 0: one per core)"]
    one, two = seconds["stage num_proc 1"], seconds["stage num_proc 2"]

    encoder = PromptEncoder(tok)
    for start in range(0, len(texts), 64):
        pairs = zip(texts[start : start + 64], records[start : start + 64], strict=True)
        ends = [prompt_end(t, parse_record(r).segments) for t, r in pairs]
        encoder.encode(texts[start : start + 64], ends)

    structured = build("span_detector", "structured")
    regex = build("span_detector", "regex")
    ours = []
    for record in records[:500]:
        parsed = parse_record(record)
        ours.append(flatten(parsed.segments, detect_spans(structured, parsed.segments)))
    fire = [(flat, truth) for _, truth, flat in (fireact(i, seed=42) for i in range(500))]

    print(
        json.dumps(
            {
                "trajectories": args.n,
                "tokens": summary["tokens"],
                "examples": summary["examples"],
                "rounds": args.repeat,
                "median_seconds": {name: round(value, 3) for name, value in seconds.items()},
                "naive_per_record_loop_without_alignment_seconds": round(naive_seconds, 3),
                "trajectories_per_second": {
                    "default": round(args.n / default, 1),
                    "num_proc_1": round(args.n / one, 1),
                    "num_proc_2": round(args.n / two, 1),
                    "naive": round(args.n / naive_seconds, 1),
                },
                "speedup_num_proc_2_over_1": round(one / two, 2),
                "stage_over_tokenizer": {
                    "default": round(default / floor, 2),
                    "num_proc_1": round(one / floor, 2),
                    "num_proc_2": round(two / floor, 2),
                },
                "target_stage_over_tokenizer": 1.5,
                "chat_template_speedup": round(
                    seconds["apply_chat_template(chats, tokenize=False)"]
                    / seconds["ChatRenderer (ours) on the same chats"],
                    2,
                ),
                "prompt_tokens_encoded_once_share": round(
                    encoder.reused_tokens / max(encoder.tokens, 1), 3
                ),
                "regex_accuracy": {
                    "deepcoder_flat": detector_accuracy(ours, tok, regex),
                    "fireact_flat": detector_accuracy(fire, tok, regex),
                },
                "agreement_structured_vs_regex": summary["agreement"]["agreement"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
