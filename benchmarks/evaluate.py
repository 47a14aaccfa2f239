"""Evaluation: batched generation vs batch size 1, through the project's lm-eval path.

The default world's base model θ0 (from the artifact cache, built there if missing) answers the
world's arithmetic benchmark in the target language with `maet.evaluation.evaluate.run_lm_eval`, once with
`eval.batch_size=1` and once with the configured batch size. Reported: generated tokens/s of
each (tokens of the responses, by the model's tokenizer) and the speed-up; the responses must be
the same (greedy decoding).

    python -m benchmarks.evaluate [--items 64] [--batch-size 64] [overrides...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from benchmarks.common import ROOT, machine, save_results
from maet import world
from maet.config.compose import load_settings
from maet.engine.base import base_model
from maet.engine.context import Context
from maet.evaluation import evaluate
from maet.models.model import resolve_device
from maet.schema.resolvers import register_resolvers
from maet.store.cache import ArtifactCache


def settings(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return load_settings(compose("config", overrides=[f"paths.output_dir={tempfile.gettempdir()}", *overrides]))


def generate(model, tokenizer, task: dict, s, batch_size: int) -> tuple[float, int, list[str]]:
    """(seconds, generated tokens, responses) of one lm-eval run at `batch_size`."""
    from dataclasses import replace

    start = time.perf_counter()
    results = evaluate.run_lm_eval(model, tokenizer, [task], replace(s.eval, batch_size=batch_size))
    seconds = time.perf_counter() - start
    _, predictions = evaluate.summarize(results, replace(s.eval, langs=[s.lang.code]))
    responses = [p["response"] for p in sorted(predictions, key=lambda p: p["doc_id"])]
    return seconds, sum(len(tokenizer(r, add_special_tokens=False).input_ids) for r in responses), responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=64, help="benchmark items (eval.limit)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's eval.batch_size")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the job config")
    args = parser.parse_args()
    machine_line = machine()
    s = settings([f"eval.limit={args.items}", *args.overrides])
    batch_size = args.batch_size or s.eval.batch_size
    if s.threads:  # as a job would (experiment=world: 1)
        torch.set_num_threads(s.threads)
    ctx = Context(s, ArtifactCache(s.paths.cache_dir), resolve_device(s.device), world.generate(s.world))
    model, tokenizer, _ = base_model(ctx)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        task = evaluate.arith_task(s.lang.code, ctx.world.benchmark[s.lang.code], Path(tmp), s.eval)
        generate(model, tokenizer, task, s, batch_size)  # warm-up (lm-eval's task building, caches)
        one = generate(model, tokenizer, task, s, 1)
        many = generate(model, tokenizer, task, s, batch_size)
    same = sum(a == b for a, b in zip(one[2], many[2], strict=True)) / len(one[2])
    result = {"items": len(one[2]), "batch_size": batch_size, "max_gen_toks": s.eval.max_gen_toks,
              "batch1": {"seconds": one[0], "tokens": one[1], "tok_s": one[1] / one[0]},
              "batched": {"seconds": many[0], "tokens": many[1], "tok_s": many[1] / many[0]},
              "speedup": (many[1] / many[0]) / (one[1] / one[0]), "same_responses": same}
    print(f"\nevaluation ({s.model.name}, arith_{s.lang.code}, {result['items']} items) — {machine_line}")
    print(f"batch size 1: {result['batch1']['tok_s']:.0f} generated tok/s; batch size {batch_size}: "
          f"{result['batched']['tok_s']:.0f} tok/s; speed-up {result['speedup']:.1f}x; "
          f"identical responses {100 * same:.0f}%")
    save_results("evaluate", result, machine_line)


if __name__ == "__main__":
    main()
