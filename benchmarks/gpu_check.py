"""The GPU check (`make gpu-check`): the built-in world job end to end on one GPU, in fp32 and in
bf16 (one seed, base and language_only beside MAET), each from its own empty cache, compared;
then, with several GPUs, the bf16 job under `torchrun --nproc_per_node N` (full-parameter stages
sharded with FSDP2) from the same θ0 and mask, its R(Lj) compared with the one-GPU run's.

    python -m benchmarks.gpu_check [--device cuda] [--small] [--processes N]

Prints per precision: wall time, peak GPU memory, the headline accuracy and held-out bits per
byte of every model, and how much of the fp32 deltas bf16 keeps (norm ratio and relative
difference of R(A) and R(Lj)); the last line is a JSON object. Fails (exit 1) when the job fails
or bf16's R(Lj) keeps less than MIN_RETAINED of the fp32 norm (weights updated in bf16 without
fp32 master weights lose small updates) or the sharded R(Lj) differs from the one-GPU R(Lj) by more
than MAX_SHARDED_DIFFERENCE, and at once (exit 2) without a CUDA device. `--processes`: how many
processes the sharded run takes (default: every visible GPU; 1: no sharded run). `--small`: the
test suite's reduced world (seconds; with `--device cpu --processes 2` it checks this script on
CPU processes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.common import ROOT, machine, run_measured

MIN_RETAINED = 0.9  # bf16's ||R(Lj)|| / fp32's
MAX_SHARDED_DIFFERENCE = 0.05  # ||R(Lj) on N processes − R(Lj) on one|| / ||R(Lj) on one||, both in bf16
LANGUAGE_LR = 2e-5  # experiment=hub's language.lr: small updates, the ones bf16 weights without fp32 masters lose
SMALL = ["world.general_per_lang=400", "world.pretrain_general_per_lang=200", "eval.dev_size=4",
         "world.parallel_per_lang=100", "world.ability_per_lang=300",
         "world.benchmark_per_lang=16", "world.pretrain_equations=100", "world.pretrain_ability_en=20",
         "model.scratch.vocab_size=400", "model.scratch.hidden_size=32", "model.scratch.intermediate_size=64",
         "model.scratch.num_layers=2", "model.scratch.max_position_embeddings=128",
         "model.scratch.pretrain_tokens=4096", "train.batch_size=4", "train.seq_len=32", "locate.tokens=256",
         "extract.tokens=1024", "language.tokens=512", "eval.max_gen_toks=8"]


def run(dtype: str, device: str, small: bool, folder: Path, launcher: tuple[str, ...] = (sys.executable,)) -> dict:
    """One job in `dtype` with the cache in `folder` (empty unless the caller put θ0 there): its
    metrics.json, timing and deltas. `launcher`: the command before launch.py (e.g. torchrun)."""
    args = [*launcher, str(ROOT / "launch.py"), f"device={device}", f"model.dtype={dtype}", "report.seeds=1",
            f"language.lr={LANGUAGE_LR}",
            "report.references=[base,language_only]", "tracker=none", f"paths.cache_dir={folder / 'cache'}",
            f"hydra.run.dir={folder / 'run'}", *(SMALL if small else [])]
    measured = run_measured(args)
    summary = json.loads((folder / "run" / "metrics.json").read_text())
    deltas = {stage: load_file(folder / "cache" / stage / summary["stages"][stage]["key"] / "tensors.safetensors")
              for stage in ("ability", "language")}
    peak_gpu = max(r["peak_gpu_mib"] for r in summary["stages"].values())
    return {"summary": summary, "seconds": measured["seconds"], "peak_gpu_mib": peak_gpu, "deltas": deltas}


def sharded_run(processes: int, device: str, small: bool, folder: Path, single: Path) -> dict:
    """The bf16 job on `processes` processes from the one-process bf16 run's θ0 and mask (copied
    from its cache `single`), so that the comparison is of the training stages."""
    for stage in ("base", "locate"):
        shutil.copytree(single / "cache" / stage, folder / "cache" / stage)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes))
    return run("bfloat16", device, small, folder, torchrun)


def compare(fp32: dict[str, torch.Tensor], bf16: dict[str, torch.Tensor]) -> dict[str, float]:
    """Norm ratio ||bf16|| / ||fp32|| and relative difference ||bf16 − fp32|| / ||fp32|| over the
    float tensors both hold (row indices are compared only through their values)."""
    names = [n for n, t in fp32.items() if t.is_floating_point() and n in bf16 and bf16[n].shape == t.shape]
    a = torch.cat([fp32[n].double().reshape(-1) for n in names])
    b = torch.cat([bf16[n].double().reshape(-1) for n in names])
    return {"norm_ratio": float(b.norm() / a.norm()), "relative_difference": float((b - a).norm() / a.norm())}


def models(summary: dict) -> dict[str, dict[str, float]]:
    """{model: {metric: value}} of the testbed (headline accuracy and held-out bits per byte)."""
    head = summary["headline"]
    bits = next((k for k in summary["metrics"] if k.endswith("/bits_per_byte")), None)
    mean = lambda v: v["mean"] if isinstance(v, dict) else v  # noqa: E731 (a cell: a number or its interval)
    return {row["model"]: {k: round(mean(row[k]), 4) for k in (head, bits) if k in row} for row in summary["testbed"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="the test suite's reduced world")
    parser.add_argument("--processes", type=int, help="processes of the sharded run (default: the GPUs; 1: none)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: FAILED: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda}); run it on a machine with a GPU")
        return 2
    print(f"gpu-check on {args.device} ({torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu'}); "
          f"{machine()}")
    processes = args.processes or (torch.cuda.device_count() if args.device == "cuda" else 1)
    with tempfile.TemporaryDirectory(prefix="maet-gpu-check-") as tmp:
        runs = {dtype: run(dtype, args.device, args.small, Path(tmp) / dtype) for dtype in ("float32", "bfloat16")}
        if processes > 1:
            runs[f"bfloat16 on {processes}"] = sharded_run(processes, args.device, args.small, Path(tmp) / "sharded",
                                                           Path(tmp) / "bfloat16")
    deltas = {stage: compare(runs["float32"]["deltas"][stage], runs["bfloat16"]["deltas"][stage])
              for stage in ("ability", "language")}
    shard = (compare(runs["bfloat16"]["deltas"]["language"], runs[f"bfloat16 on {processes}"]["deltas"]["language"])
             if processes > 1 else None)
    for dtype, r in runs.items():
        print(f"{dtype}: {r['seconds']:.0f} s, peak GPU {r['peak_gpu_mib']:.0f} MiB, models {models(r['summary'])}")
    for stage, d in deltas.items():
        print(f"{stage} delta, bf16 vs fp32: norm ratio {d['norm_ratio']:.3f}, "
              f"relative difference {d['relative_difference']:.3f}")
    ok = deltas["language"]["norm_ratio"] >= MIN_RETAINED
    print(f"gpu-check: {'OK' if ok else 'FAILED'}: bf16 keeps {deltas['language']['norm_ratio']:.1%} of the fp32 "
          f"R(Lj) norm (at least {MIN_RETAINED:.0%} required)")
    if shard:
        shard_ok = shard["relative_difference"] <= MAX_SHARDED_DIFFERENCE
        ok = ok and shard_ok
        print(f"gpu-check: {'OK' if shard_ok else 'FAILED'}: R(Lj) sharded over {processes} processes differs from "
              f"one process's by {shard['relative_difference']:.2%} (at most {MAX_SHARDED_DIFFERENCE:.0%} allowed)")
    print(json.dumps({"device": args.device, "ok": ok, "deltas": deltas, "sharded": shard,
                      **{dtype: {"seconds": r["seconds"], "peak_gpu_mib": r["peak_gpu_mib"],
                                 "models": models(r["summary"])} for dtype, r in runs.items()}}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
