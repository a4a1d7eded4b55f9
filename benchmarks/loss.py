"""Distillation loss, forward + backward, side by side: ours (fused, chunked) vs naive vs peers.

Every case runs in its own subprocess (clean peak memory, read with ``resource.getrusage`` in
the child) under an address-space cap (RLIMIT_AS), so a case that runs out of memory is
reported as ``"oom"`` instead of taking the machine down. Prints one JSON document.

Cases (V = 151,936, the Qwen3 vocabulary; H = 512; student and teacher each a hidden state
[N, H] and an LM head [V, H]; gradients to the student's hidden states and head):
  naive_kl, naive_jsd   full [N, V] logits in plain PyTorch
  ours_kl, ours_jsd     deepcoder's fused chunked engine (jsd at beta = 0.5)
  trl_jsd               TRL ``GKDTrainer.generalized_jsd_loss`` on full logits
  liger_jsd             Liger-Kernel ``LigerFusedLinearJSDLoss`` (compiled=False: its
                        chunked PyTorch path; hard-label weight 0)
  ours_topk             deepcoder's engine, student fused, teacher as cached top-64 (kl)

    python benchmarks/loss.py --n 512,2048,4096 --cases ours_kl,liger_jsd
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

VOCAB, HIDDEN = 151_936, 512
CASES = ("naive_kl", "naive_jsd", "ours_kl", "ours_jsd", "trl_jsd", "liger_jsd", "ours_topk")
TOP_K = 64


def _inputs(n, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    student_head = (torch.randn(VOCAB, HIDDEN, generator=g) / HIDDEN**0.5).requires_grad_()
    teacher_head = torch.randn(VOCAB, HIDDEN, generator=g) * (2.0 / HIDDEN**0.5)
    student_hidden = torch.randn(n, HIDDEN, generator=g).requires_grad_()
    teacher_hidden = torch.randn(n, HIDDEN, generator=g)
    return student_hidden, student_head, teacher_hidden, teacher_head


def _naive(kind, sh, sw, th, tw):
    import torch

    s = torch.log_softmax(sh @ sw.t(), dim=-1)
    with torch.no_grad():
        t = torch.log_softmax(th @ tw.t(), dim=-1)
    if kind == "kl":
        return (t.exp() * (t - s)).sum(-1).mean()
    m = torch.logaddexp(t + torch.log(torch.tensor(0.5)), s + torch.log(torch.tensor(0.5)))
    return (0.5 * (t.exp() * (t - m)).sum(-1) + 0.5 * (s.exp() * (s - m)).sum(-1)).mean()


def _ours(kind, sh, sw, th, tw, chunk, topk=None):
    import torch

    from deepcoder_core.distill.engine import distill_loss
    from deepcoder_core.plugins import build

    loss_fn = build("loss", "kl") if kind == "kl" else build("loss", "jsd", beta=0.5)
    span = torch.ones(sh.shape[0], dtype=torch.long)  # all reasoning: every token counts
    teacher = {"teacher_topk": topk} if topk is not None else {"teacher_logits": (th, tw)}
    out = distill_loss(
        loss_fn, span_type=span, student_logits=(sh, sw), chunk_size=chunk, **teacher
    )
    return out.loss


def _teacher_topk(th, tw, k, chunk=512):
    """The sparse cache a teacher-logits pass would have written (not timed)."""
    import torch

    from deepcoder_core.protocols import TopK

    idx, lp = [], []
    with torch.no_grad():
        for i in range(0, th.shape[0], chunk):
            logp = torch.log_softmax(th[i : i + chunk] @ tw.t(), dim=-1)
            values, indices = logp.topk(k, dim=-1)
            idx.append(indices.int())
            lp.append(values.half())
    logprobs = torch.cat(lp)
    tail = (1 - logprobs.float().exp().sum(-1)).clamp_min(0)
    return TopK(torch.cat(idx), logprobs, tail)


def child(case, n, chunk):
    """Run one case, print a JSON line (seconds, peak RSS, loss value)."""
    import torch

    sh, sw, th, tw = _inputs(n)
    topk = _teacher_topk(th, tw, TOP_K) if case == "ours_topk" else None
    if case == "ours_topk":
        th = tw = None
    import gc

    gc.collect()
    setup_rss = _rss_gb()
    run = None
    if case == "trl_jsd":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        def run():
            s = (sh @ sw.t()).unsqueeze(0)
            with torch.no_grad():
                t = (th @ tw.t()).unsqueeze(0)
            # batchmean divides the token sum by the batch size (1 here): per token = / n
            return GKDTrainer.generalized_jsd_loss(s, t, beta=0.5) / n
    elif case == "liger_jsd":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False
        )
        labels = torch.zeros(n, dtype=torch.long)

        def run():
            return liger(sh, sw, th, tw, labels)
    elif case.startswith("naive_"):

        def run():
            return _naive(case.removeprefix("naive_"), sh, sw, th, tw)
    else:

        def run():
            kind = "kl" if case in ("ours_kl", "ours_topk") else "jsd"
            return _ours(kind, sh, sw, th, tw, chunk, topk)

    start = time.perf_counter()
    loss = run()
    loss.backward()
    seconds = time.perf_counter() - start
    grad_norm = float(sh.grad.norm()) if sh.grad is not None else None
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "peak_rss_gb": round(_rss_gb(), 2),
                "setup_rss_gb": round(setup_rss, 2),
                "loss_per_token": float(loss),
                "hidden_grad_norm": grad_norm,
            }
        )
    )


def _rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _available_gb():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 1024**2


def run_case(case, n, chunk, cap_gb, timeout):
    # never let one case push the shared machine into the kernel's OOM killer
    cap_gb = round(min(cap_gb, _available_gb() - 1.5), 1)

    def limit():
        cap = int(cap_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--child", case, "--n", str(n), "--chunk-size", str(chunk)]
    result = {"case": case, "n": n, "mem_cap_gb": cap_gb}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, preexec_fn=limit, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {**result, "status": f"timeout after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return {**result, "status": "ok", **json.loads(lines[-1])}
    err = proc.stderr.strip().splitlines()
    text = "\n".join(err[-3:])
    oom = any(
        s in proc.stderr
        for s in ("MemoryError", "can't allocate memory", "DefaultCPUAllocator", "std::bad_alloc")
    )
    if oom or proc.returncode in (-9, 137):
        return {**result, "status": f"oom (address space capped at {cap_gb} GB)"}
    if "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr:
        return {**result, "status": f"unavailable: {err[-1] if err else 'import failed'}"}
    return {**result, "status": f"error (rc {proc.returncode}): {text[-400:]}"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="512,2048,4096", help="token counts, comma separated")
    parser.add_argument("--cases", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    parser.add_argument("--chunk-size", type=int, default=1024, help="our engine's chunk size")
    parser.add_argument("--mem-cap-gb", type=float, default=20.0, help="RLIMIT_AS per case")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, int(args.n), args.chunk_size)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    results = []
    for n in (int(x) for x in args.n.split(",")):
        for case in cases:
            result = run_case(case, n, args.chunk_size, args.mem_cap_gb, args.timeout)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
    print(
        json.dumps(
            {
                "benchmark": "distillation loss forward+backward",
                "vocab": VOCAB,
                "hidden": HIDDEN,
                "top_k": TOP_K,
                "chunk_size": args.chunk_size,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "load_average_at_end": os.getloadavg(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
