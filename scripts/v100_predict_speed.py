#!/usr/bin/env python
"""How fast the authors' V100 table predicts, as the search would ask it (issue 9 asks for ≥ 5,000 candidates/s).

    .venv/bin/python scripts/v100_predict_speed.py [--table v100-fp16] [--latency-batch 32] [--input-size 480]
                                                  [--candidates 20000] [--json OUT.json]

Four figures, in one process: the first parse of the table; a search-like walk (random mutations from the R50-like
initial structure, every candidate predicted once, per-conv cache cold at the start, so new convs cost scipy
interpolations); the warm rate (the same candidates predicted again, every conv cached); and the cost of one conv
never seen before.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from rich.console import Console
from rich.table import Table

from maedet.fileio import atomic_write_text
from maedet.search.space import SearchSpace
from maedet.zoo import Structure, load_structure
from maedet.zoo.latency.v100 import V100_TABLES, load_v100_table


def random_walk(count: int, seed: int) -> list[Structure]:
    """Structures as the evolution meets them: each one a mutation of a random earlier one."""
    rng = random.Random(seed)
    start = load_structure("r50_like_init")
    space = SearchSpace.from_structure(start)
    genomes = [space.encode(start)]
    while len(genomes) < count:
        child = space.mutate(genomes[int(rng.random() * len(genomes))], rng)
        if child is not None:
            genomes.append(child)
    return [space.decode(g) for g in genomes]


def new_conv_cost_us(predictor, count: int, seed: int) -> float:
    """Median µs for a conv never asked before: a cache miss, which runs the scipy interpolations."""
    rng = random.Random(seed)
    costs = []
    for _ in range(count):
        kernel, size = rng.choice((1, 3, 5)), rng.choice((15, 30, 60, 120, 240))
        conv = ("Regular", 1, 0, kernel, 8 * rng.randint(1, 256), size + rng.randint(1, 7), 8 * rng.randint(1, 256))
        begin = time.perf_counter()
        predictor.predict_conv_ms(conv)
        costs.append(time.perf_counter() - begin)
    return statistics.median(costs) * 1e6


def rate(predict, structures: list[Structure]) -> tuple[float, float]:
    """(candidates per second, seconds in all) for predicting every structure once."""
    begin = time.perf_counter()
    for structure in structures:
        predict(structure)
    elapsed = time.perf_counter() - begin
    return len(structures) / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=V100_TABLES, default="v100-fp16")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=480)
    parser.add_argument("--candidates", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    structures = random_walk(args.candidates, args.seed)
    begin = time.perf_counter()
    predictor = load_v100_table(args.table, args.latency_batch, args.input_size)
    predictor.predict_ms(structures[0])  # the parse happens on first use
    first_use_s = time.perf_counter() - begin
    head = structures[1:1001]
    cold_head_rate, _ = rate(predictor.predict_ms, head)
    search_rate, search_s = rate(predictor.predict_ms, structures[1001:])
    warm_rate, _ = rate(predictor.predict_ms, structures)
    miss_us = new_conv_cost_us(predictor, 300, args.seed)
    results = {
        "table": args.table,
        "batch": args.latency_batch,
        "input_size": args.input_size,
        "candidates": len(structures),
        "first_use_s": first_use_s,
        "first_1000_candidates_per_s": cold_head_rate,
        "rest_candidates_per_s": search_rate,
        "rest_s": search_s,
        "warm_candidates_per_s": warm_rate,
        "warm_us_per_call": 1e6 / warm_rate,
        "new_conv_median_us": miss_us,
    }
    table = Table(title=f"{args.table}, batch {args.latency_batch}, {args.input_size} px: predict_ms speed")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("first use (parse + first structure)", f"{first_use_s:.2f} s")
    table.add_row("search walk, first 1,000 candidates (cold cache)", f"{cold_head_rate:,.0f} /s")
    table.add_row(f"search walk, next {len(structures) - 1001:,} candidates", f"{search_rate:,.0f} /s")
    table.add_row("warm (every conv cached)", f"{warm_rate:,.0f} /s ({1e6 / warm_rate:.1f} µs each)")
    table.add_row("one new conv (cache miss), median", f"{miss_us:,.0f} µs")
    Console().print(table)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
