#!/usr/bin/python3
"""loom against PyTorch on the same training step, side by side in one run.

    /usr/bin/python3 benchmarks/compare_pytorch.py [--loom-bench build/benchmarks/loom-bench]
                                                   [--cases charlm,d256,d512] [--threads 1,2]

The models are those of `loom-bench train` (benchmarks/train.cpp), written here in plain PyTorch
the way x-transformers builds them: token embedding (+ an absolute position embedding, or rotary
for charlm), pre-norm blocks of attention (q, k, v without bias, output projection without bias,
causal) and a GELU feed-forward (with biases), a final LayerNorm, logits without bias. The step:
zero_grad, forward, cross-entropy over the next byte, backward, clip_grad_norm_(1.0), AdamW
(lr 1e-3, weight decay 0.1) - fp32. Each (framework, case, threads) runs in a fresh process; the
figure is the median step after two warm-up steps, and peak memory is the growth of the
process's peak resident set over the steps (the same measure for both).

Any torch works. Debian 12: `apt-get install python3-torch libopenblas0-openmp` (PyTorch 1.13;
without an OpenBLAS package, Debian's torch falls back to the reference BLAS, 20-70x slower).
The script prints which BLAS torch's libblas.so.3 resolves to.
PyTorch's attention here is the plain materialised one (scores, mask, softmax, weights·V), which
is what torch 1.13 has; newer torch's fused scaled_dot_product_attention is used when present.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

CASES = {  # name: dim, depth, heads, dim_head, ff_mult, batch, seq, rotary
    "charlm": (128, 4, 4, 32, 4, 16, 128, True),
    "d256": (256, 4, 4, 64, 4, 8, 256, False),
    "d512": (512, 6, 8, 64, 4, 4, 512, False),
}


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb():
    # VmHWM, the peak of this memory image (ru_maxrss would survive exec and start at the parent's size)
    with open("/proc/self/status") as f:
        kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    return kb * 1024 / 1e6


def run_torch(case, threads):
    """One case in this process; prints one JSON line."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dim, depth, heads, dim_head, ff_mult, batch, seq, rotary = CASES[case]
    inner = heads * dim_head
    sdpa = getattr(F, "scaled_dot_product_attention", None)

    def rotate(x, cos, sin):  # rotary on the first half/second half pairs (x-transformers' default)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_k = nn.Linear(dim, inner, bias=False)
            self.to_v = nn.Linear(dim, inner, bias=False)
            self.to_out = nn.Linear(inner, dim, bias=False)
            self.ff_in, self.ff_out = nn.Linear(dim, dim * ff_mult), nn.Linear(dim * ff_mult, dim)

        def forward(self, x, mask, rot):
            b, n, _ = x.shape
            h = self.norm1(x)
            q, k, v = (t(h).view(b, n, heads, dim_head).transpose(1, 2) for t in (self.to_q, self.to_k, self.to_v))
            if rot is not None:
                q, k = rotate(q, *rot), rotate(k, *rot)
            if sdpa is not None:
                o = sdpa(q, k, v, is_causal=True)
            else:
                s = (q @ k.transpose(-1, -2)) * dim_head ** -0.5
                o = s.masked_fill(mask, float("-inf")).softmax(-1) @ v
            x = x + self.to_out(o.transpose(1, 2).reshape(b, n, inner))
            return x + self.ff_out(F.gelu(self.ff_in(self.norm2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.token_emb = nn.Embedding(256, dim)
            self.pos_emb = None if rotary else nn.Embedding(seq, dim)
            self.layers = nn.ModuleList(Block() for _ in range(depth))
            self.norm = nn.LayerNorm(dim)
            self.to_logits = nn.Linear(dim, 256, bias=False)
            inv_freq = 1.0 / (10000 ** (torch.arange(0, dim_head, 2).float() / dim_head))
            self.register_buffer("inv_freq", inv_freq)

        def forward(self, tokens):
            n = tokens.shape[1]
            x = self.token_emb(tokens)
            rot = None
            if self.pos_emb is not None:
                x = x + self.pos_emb(torch.arange(n))
            else:
                freqs = torch.arange(n).float()[:, None] * self.inv_freq[None, :]
                freqs = torch.cat((freqs, freqs), dim=-1)
                rot = (freqs.cos(), freqs.sin())
            mask = torch.ones(n, n, dtype=torch.bool).triu(1)
            for layer in self.layers:
                x = layer(x, mask, rot)
            return self.to_logits(self.norm(x))

    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (batch, seq + 1), generator=gen)
    inp, target = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inp).reshape(-1, 256), target.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    before = rss_mb()
    steps = 3 if case == "d512" else 5
    step()
    step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = peak_rss_mb() - before
    fwd = []
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            model(inp)
            fwd.append(time.perf_counter() - t0)
    med = sorted(times)[len(times) // 2]
    print(json.dumps({"tokens_per_s": batch * seq / med, "forward_tokens_per_s": batch * seq / sorted(fwd)[len(fwd) // 2],
                      "peak_rss_growth_mb": peak, "torch": torch.__version__,
                      "params": sum(p.numel() for p in model.parameters())}))


def run_loom(bench, case, threads):
    out = subprocess.run([bench, "train", "--filter", f"{case}_t{threads}"], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True).stdout
    got = {}
    for line in out.splitlines():
        r = json.loads(line)
        if r["case"] != f"{case}_t{threads}":  # the filter also matches the _bf16 case: fp32 only here
            continue
        got[r["metric"]] = r["value"]
        if r["metric"] == "train_gflops":
            got["peak_gflops"] = r["baseline_value"]
    return got


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loom-bench", default=os.path.join(os.path.dirname(__file__), "..", "build", "benchmarks", "loom-bench"))
    ap.add_argument("--cases", default="charlm,d256,d512")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--torch-case", help=argparse.SUPPRESS)  # internal: run one PyTorch case in this process
    args = ap.parse_args()
    if args.torch_case:
        case, threads = args.torch_case.split(":")
        run_torch(case, int(threads))
        return
    try:
        import torch
    except ImportError:
        sys.exit("compare_pytorch: no torch for this python (Debian 12: apt-get install python3-torch)")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    simd = " ".join(f for f in flags if f.startswith("avx512") or f in ("avx2", "fma"))
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3") if os.path.exists(
        "/usr/lib/x86_64-linux-gnu/libblas.so.3") else "?"
    print(f"# {time.strftime('%Y-%m-%d')}, {cpu} ({simd}); torch {torch.__version__}, BLAS {blas}; "
          f"{os.cpu_count()} CPUs")
    head = f"{'case':8} {'thr':>3} | {'loom tok/s':>10} {'torch tok/s':>11} {'ratio':>6} | {'fwd loom':>9} {'fwd torch':>9} {'ratio':>6} | {'mem loom MB':>11} {'torch MB':>8} | {'% peak':>6}"
    print(head)
    print("-" * len(head))
    for case in args.cases.split(","):
        for threads in map(int, args.threads.split(",")):
            lm = run_loom(args.loom_bench, case, threads)
            out = subprocess.run([sys.executable, __file__, "--torch-case", f"{case}:{threads}"], capture_output=True,
                                 text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True).stdout
            tp = json.loads(out.strip().splitlines()[-1])
            pct = 100 * lm["train_gflops"] / lm["peak_gflops"]
            print(f"{case:8} {threads:>3} | {lm['tokens_per_s']:>10.0f} {tp['tokens_per_s']:>11.0f} "
                  f"{lm['tokens_per_s'] / tp['tokens_per_s']:>6.2f} | {lm['forward_tokens_per_s']:>9.0f} "
                  f"{tp['forward_tokens_per_s']:>9.0f} {lm['forward_tokens_per_s'] / tp['forward_tokens_per_s']:>6.2f} | "
                  f"{lm['peak_rss_growth_mb']:>11.0f} {tp['peak_rss_growth_mb']:>8.0f} | {pct:>5.1f}%", flush=True)


if __name__ == "__main__":
    main()
