"""`python -m benchmarks.table`: the latest results (`benchmarks/results/*.json`) as one Markdown
table, for `benchmarks/README.md`."""

from __future__ import annotations

import json

from benchmarks.common import RESULTS


def rows(name: str, r: dict) -> list[list[str]]:
    """[target, measured, ratio, target value, holds] rows of one benchmark's results."""
    if name == "merge":
        out = []
        for x in r["results"]:
            b, size = x["best"], f"{x['params'] / 1e6:.0f}M params, {x['dtype']}"
            out += [[f"merge wall-clock vs mergekit ({size})", f"{b['maet']['seconds']:.1f} s vs {b['mergekit']['seconds']:.1f} s",
                     f"{x['time_ratio']:.2f}", "≤ 1.0", x["time_ratio"] <= 1.0],
                    [f"merge peak RSS vs mergekit ({size})", f"{b['maet']['peak_rss_mib']:.0f} vs {b['mergekit']['peak_rss_mib']:.0f} MiB",
                     f"{x['rss_ratio']:.2f}", "≤ 1.0", x["rss_ratio"] <= 1.0],
                    [f"merge outputs equal ({x['dtype']})", f"max diff {x['max_diff_rounding_units']:.2f} rounding units",
                     "", "≤ 4 units", x["max_diff_rounding_units"] <= 4]]
        return out
    if name == "stages":
        loc, tr = r["locate"], r["train"]
        return [["locate `grad` vs plain forward+backward", f"{loc['grad_tok_s']:,.0f} vs {loc['plain_tok_s']:,.0f} tok/s",
                 f"{loc['ratio']:.2f}", "≤ 1.2", loc["ratio"] <= 1.2],
                [f"key-neuron optimizer state vs full FT (ratio {tr['ratio']})",
                 f"{tr['key_neurons_optimizer_bytes'] / 2**20:.2f} vs {tr['full_optimizer_bytes'] / 2**20:.1f} MiB",
                 f"{tr['optimizer_ratio']:.3f}", "≤ 0.10", tr["optimizer_ratio"] <= 0.10],
                ["key-neuron step time vs full FT", f"{1e3 * tr['key_neurons_step_s']:.0f} vs {1e3 * tr['full_step_s']:.0f} ms",
                 f"{tr['step_ratio']:.2f}", "≤ 1.0", tr["step_ratio"] <= 1.0]]
    if name == "sweep":
        return [[f"2x2 sweep vs four single runs ({'default' if r['budgets'] == 'default' else 'reduced'} budgets)",
                 f"{r['sweep_seconds']:.0f} s vs {sum(r['single_seconds']):.0f} s", f"{r['ratio']:.2f}", "≤ 0.6", r["ratio"] <= 0.6]]
    if name == "evaluate":
        return [[f"generation, batch {r['batch_size']} vs batch 1 ({r['items']} items)",
                 f"{r['batched']['tok_s']:.0f} vs {r['batch1']['tok_s']:.0f} generated tok/s", f"{r['speedup']:.1f}x",
                 "report", True]]
    if name == "threads":
        alone, paired = r["alone_tok_s"], r["paired_tok_s"]
        show = lambda k: f"{max(alone[k]):,.0f} alone, {max(paired[k]):,.0f} beside a second job"  # noqa: E731
        return [[f"world model training, default threads ({r['cpu_count']}) passive vs spinning",
                 f"{show('default_threads_passive')} vs {show('default_threads')} tok/s",
                 f"{r['passive_vs_default_paired']:.1f}", "report", True],
                ["world model training, one thread", f"{show('one_thread')} tok/s", "", "report", True]]
    if name == "memory":
        c = r["cases"]
        size = f"{c['frozen']['params'] / 1e6:.0f}M params, fp32, 1x{r['args']['seq']} tokens"
        return [[f"key-neuron step peak vs frozen forward+backward ({size})",
                 f"{c['rows']['peak_mib']:.0f} vs {c['frozen']['peak_mib']:.0f} MiB "
                 f"(weights patched up front: {c['rows_upfront']['peak_mib']:.0f}; full FT: {c['full']['peak_mib']:.0f})",
                 f"{r['key_rows_peak_vs_frozen']:.2f}", "≤ 1.15", r["key_rows_peak_vs_frozen"] <= 1.15],
                [f"bf16 delta norm ÷ fp32 delta norm, fp32 master weights ({r['bf16']['steps']} steps, lr {r['bf16']['lr']})",
                 f"cos {r['bf16']['full_master_cosine']:.4f}; without master weights "
                 f"{r['bf16_delta_retained_without_master']:.2f}", f"{r['bf16_delta_retained']:.3f}", "≥ 0.95",
                 r["bf16_delta_retained"] >= 0.95],
                *([[f"full-parameter training state per process, FSDP2 on {r['sharded']['processes']} processes "
                    f"÷ unsharded ({size})",
                    f"{r['sharded']['sharded_rank0_bytes'] / 2**20:.0f} vs {r['sharded']['unsharded_bytes'] / 2**20:.0f} MiB",
                    f"{r['sharded_state_vs_unsharded']:.3f}", "≤ 0.55", r["sharded_state_vs_unsharded"] <= 0.55]]
                  if "sharded" in r else [])]
    return []


def main() -> None:
    lines = ["| target | measured | ratio | target | holds | run |", "|---|---|---|---|---|---|"]
    machines: dict[str, int] = {}
    for name in ("merge", "stages", "memory", "sweep", "evaluate", "threads"):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            box, _, load = r["machine"].partition(", load average ")
            ref = machines.setdefault(box, len(machines) + 1)
            for target, measured, ratio, goal, ok in rows(name, r):
                lines.append(f"| {target} | {measured} | {ratio} | {goal} | {'yes' if ok else '**no**'} | "
                             f"`{name}`, {r['date']}, commit `{r.get('commit', 'not recorded')}`, machine {ref}, "
                             f"load {load.split()[0]} |")
    lines.append("")
    lines += [f"Machine {ref}: {line}" for line, ref in machines.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
