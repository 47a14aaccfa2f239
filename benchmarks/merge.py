"""Out-of-core merge vs mergekit's `task_arithmetic` on the same inputs.

A Llama of ≥ 100M parameters is generated here (θ0 and two fine-tuned copies θ1, θ2, sharded
safetensors), in fp32 and in bf16. Both tools merge `θ0 + w1·(θ1 − θ0) + w2·(θ2 − θ0)` from disk
into a Hugging Face checkpoint, each as its own process (command-line tool, imports included):
`python -m maet.scale.streaming` and `mergekit-yaml`. Reported: wall-clock and peak RSS of each and
their ratios (MAET / mergekit, target ≤ 1.0), and the largest difference between the outputs in
units of the dtype's rounding (eps · largest input magnitude of the tensor).

mergekit is not a dependency of the project: it is installed into its own throwaway venv
(`--mergekit-venv`, created on first use with the same torch version as this one).

    python -m benchmarks.merge [--hidden 768 --layers 12 --vocab 32000] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.common import machine, run_measured, save_results, verdict
from maet.scale.streaming import Checkpoint

WEIGHTS = (0.7, 0.4)
MERGEKIT = "mergekit==0.1.5"


def ensure_mergekit(venv: Path) -> Path:
    """`mergekit-yaml` of a venv of its own (created with our torch version, then mergekit)."""
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        print(f"installing {MERGEKIT} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # based on the base interpreter
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
        subprocess.run([*pip, MERGEKIT], check=True)
    return exe


def make_models(folder: Path, hidden: int, layers: int, vocab: int, dtype: torch.dtype) -> tuple[list[Path], int]:
    """θ0 (random init) and θ1, θ2 = θ0 + small noise, saved sharded; returns (dirs, parameters)."""
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    params = model.num_parameters()
    dirs = [folder / name for name in ("base", "ft1", "ft2")]
    model.save_pretrained(dirs[0], max_shard_size="200MB")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, d in enumerate(dirs[1:], 1):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(base[n] + (0.002 * torch.randn(p.shape, generator=g)).to(dtype))
        model.save_pretrained(d, max_shard_size="200MB")
    del model, base
    return dirs, params


def mergekit_config(dirs: list[Path], dtype: str) -> str:
    models = "".join(f"  - model: {d}\n    parameters: {{weight: {w}}}\n" for d, w in zip(dirs[1:], WEIGHTS, strict=True))
    return (f"merge_method: task_arithmetic\nbase_model: {dirs[0]}\nmodels:\n{models}"
            f"parameters: {{normalize: false}}\ndtype: {dtype}\n")


def rounding_units(a_dir: Path, b_dir: Path, inputs: list[Path]) -> float:
    """max over tensors of max|a − b| / (eps(dtype) · max |input|): 1 = one rounding of the largest input."""
    a, b, ins = Checkpoint(a_dir), Checkpoint(b_dir), [Checkpoint(d) for d in inputs]
    if set(a.names()) != set(b.names()):
        raise AssertionError(f"different tensors: {sorted(set(a.names()) ^ set(b.names()))[:5]}")
    worst = 0.0
    for name in a.names():
        x, y = a.get(name), b.get(name)
        if x.dtype != y.dtype or x.shape != y.shape:
            raise AssertionError(f"{name}: {x.dtype} {tuple(x.shape)} vs {y.dtype} {tuple(y.shape)}")
        scale = max(float(c.get(name).float().abs().max()) for c in ins)
        err = float((x.float() - y.float()).abs().max())
        worst = max(worst, err / (torch.finfo(x.dtype).eps * scale) if scale else err)
    return worst


def bench(dtype_name: str, args, mergekit: Path, work: Path) -> dict:
    dtype = getattr(torch, dtype_name)
    folder = work / dtype_name
    dirs, params = make_models(folder, args.hidden, args.layers, args.vocab, dtype)
    (folder / "mergekit.yml").write_text(mergekit_config(dirs, dtype_name))
    runs = {}
    for repeat in range(args.repeats):  # alternate the order: neither tool always gets a warm page cache
        order = ["maet", "mergekit"] if repeat % 2 == 0 else ["mergekit", "maet"]
        for tool in order:
            out = folder / f"out-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            if tool == "maet":
                cmd = [sys.executable, "-m", "maet.scale.streaming", "--base", str(dirs[0]),
                       *[a for d, w in zip(dirs[1:], WEIGHTS, strict=True) for a in ("--model", f"{d}:{w}")], "--out", str(out)]
            else:
                cmd = [str(mergekit), str(folder / "mergekit.yml"), str(out), "--no-copy-tokenizer",
                       "--no-write-model-card", "--quiet"]
            r = run_measured(cmd)
            runs.setdefault(tool, []).append({"seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"]})
            print(f"  {dtype_name} {tool}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    units = rounding_units(folder / "out-maet", folder / "out-mergekit", dirs)
    best = {tool: {k: min(r[k] for r in rs) for k in ("seconds", "peak_rss_mib")} for tool, rs in runs.items()}
    size = sum(f.stat().st_size for f in dirs[0].glob("*.safetensors")) / 2**20
    shutil.rmtree(folder, ignore_errors=True)
    return {"dtype": dtype_name, "params": params, "checkpoint_mib": size, "runs": runs, "best": best,
            "time_ratio": best["maet"]["seconds"] / best["mergekit"]["seconds"],
            "rss_ratio": best["maet"]["peak_rss_mib"] / best["mergekit"]["peak_rss_mib"],
            "max_diff_rounding_units": units}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tool (the best is reported)")
    parser.add_argument("--mergekit-venv", type=Path, default=Path(tempfile.gettempdir()) / "maet-mergekit-venv")
    parser.add_argument("--workdir", type=Path, default=None, help="where the generated checkpoints go (a temp dir)")
    args = parser.parse_args()
    machine_line = machine()
    mergekit = ensure_mergekit(args.mergekit_venv)
    work = Path(tempfile.mkdtemp(prefix="maet-bench-merge-", dir=args.workdir))
    try:
        results = [bench(d, args, mergekit, work) for d in args.dtypes]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmerge, out-of-core: MAET (python -m maet.scale.streaming) vs mergekit task_arithmetic — {machine_line}")
    for r in results:
        ok = r["time_ratio"] <= 1.0 and r["rss_ratio"] <= 1.0 and r["max_diff_rounding_units"] <= 4
        print(f"{r['dtype']:>8}: {r['params'] / 1e6:.0f}M params ({r['checkpoint_mib']:.0f} MiB per checkpoint); "
              f"time {r['best']['maet']['seconds']:.1f} s vs {r['best']['mergekit']['seconds']:.1f} s "
              f"(ratio {r['time_ratio']:.2f}); peak RSS {r['best']['maet']['peak_rss_mib']:.0f} vs "
              f"{r['best']['mergekit']['peak_rss_mib']:.0f} MiB (ratio {r['rss_ratio']:.2f}); "
              f"max difference {r['max_diff_rounding_units']:.2f} rounding units; target {verdict(ok)}")
    print(json.dumps({"saved": str(save_results("merge", {"weights": WEIGHTS, "results": results}, machine_line))}))


if __name__ == "__main__":
    main()
