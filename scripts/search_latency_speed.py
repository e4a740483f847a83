"""Search rate with a latency budget active: the maedet-m preset (FLOPs + layers) plus the authors' latency budget
(v100-fp16, batch 32, 480 px, 0.8 ms per image = 25.6 ms per batch), against the same search without it; with
``--table FILE``, also a profiled table's budget of 1.0×ResNet-50.

Run: .venv/bin/python scripts/search_latency_speed.py [--iterations 20000] [--table runs/latency/cpu640.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from maedet.search import Search, SearchSettings, preset_budget
from maedet.search.latency import open_latency_target, parse_latency_budget
from maedet.zoo import builtin_structure


def rate(settings: SearchSettings) -> tuple[float, float]:
    started = time.perf_counter()
    search = Search(settings).run()
    return search.candidates / (time.perf_counter() - started), search.best[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--table", help="a profiled latency table: also time its 1.0xresnet50 budget")
    args = parser.parse_args()
    init = builtin_structure("r50_like_init")
    budget = preset_budget("maedet-m")
    plain = SearchSettings(init=init, budget=budget, iterations=args.iterations)
    started = time.perf_counter()
    target = open_latency_target("v100-fp16", batch=32, input_size=480)
    target.predict_ms(init)  # parse the table (first use) outside the timed search
    print(f"table load: {time.perf_counter() - started:.2f} s")
    with_latency = dataclasses.replace(plain, budget=dataclasses.replace(budget, latency_ms=0.8 * 32), latency=target)
    runs = [("preset maedet-m", plain), ("preset maedet-m + 25.6 ms (v100-fp16 b32 480)", with_latency)]
    if args.table:
        profiled = open_latency_target(args.table)
        limit = parse_latency_budget("1.0xresnet50", profiled)
        budget_r50 = dataclasses.replace(budget, latency_ms=limit)
        name = f"preset maedet-m + 1.0xresnet50 ({limit:.1f} ms, {args.table})"
        runs.append((name, dataclasses.replace(plain, budget=budget_r50, latency=profiled)))
    for name, settings in runs:
        per_s, best = rate(settings)
        print(f"{name}: {args.iterations:,} candidates, {per_s:,.0f} candidates/s, best score {best:.3f}")


if __name__ == "__main__":
    main()
