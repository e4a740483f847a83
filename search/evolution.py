"""The evolutionary search: a population of genomes, mutated, budget-checked, scored, ranked (docs/design.md §4).

Determinism: all randomness comes from one explicitly seeded ``random.Random``; candidates are proposed in batches
of a fixed size and merged in proposal order, so the result does not depend on how many workers score a batch.
The whole state (population, RNG state, counters, seen set, history) is checkpointed at batch boundaries, which is
why a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maedet.errors import MaeDetError
from maedet.fileio import atomic_write_text
from maedet.zoo import Structure

from .budget import Budget
from .errors import SearchError
from .evaluator import GenomeEvaluator
from .executors import Executor, SerialExecutor
from .latency import GenomeLatency, LatencyTarget
from .memory_budget import GenomeMemory, MemoryModel
from .score import DEFAULT_RATIOS, ScoreResult, check_forward_memory, forward_score
from .space import GENOME_ID_BYTES, KERNELS, Genome, SearchSpace, genome_id

__all__ = ["CHECKPOINT_NAME", "ForwardOptions", "Search", "SearchError", "SearchSettings"]

CHECKPOINT_NAME = "checkpoint.json"
CHECKPOINT_FORMAT = "maedet-search-checkpoint/2"  # /2: the seen set holds SHA-256 genome ids (space.genome_id)
_FORMAT_FAMILY = "maedet-search-checkpoint/"
MAX_EXTRA_MUTATIONS = 30
MAX_MUTATIONS = 64  # a genome has 1 + 4 genes per stage (21 for five stages): more steps make an unrelated child
MAX_CHECKPOINT_BYTES = 1 << 30


@dataclass(frozen=True)
class ForwardOptions:
    """Settings of the paper's forward score when ``score == 'forward'``."""

    batch: int = 8
    resolution: int = 224
    repeats: int = 4
    seed: int = 0
    device: str = "cpu"

    def score(self, structure: Structure, ratios: Sequence[float]) -> ScoreResult:
        """The forward score of ``structure`` with these settings."""
        return forward_score(
            structure,
            ratios,
            batch=self.batch,
            resolution=self.resolution,
            repeats=self.repeats,
            seed=self.seed,
            device=self.device,
        )


@dataclass(frozen=True)
class SearchSettings:
    """Everything that determines a search's result (``iterations`` only says where it ends)."""

    init: Structure
    budget: Budget
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    population: int = 256
    iterations: int = 100_000
    seed: int = 0
    score: str = "closed-form"
    forward: ForwardOptions = field(default_factory=ForwardOptions)
    batch: int = 32
    mutations: int = 2  # mutations per child drawn from 1..mutations (one step often only moves along a wall)
    elite: float = 0.25  # half of the parents are drawn from this top fraction of the population
    checkpoint_every: int = 5000
    latency: LatencyTarget | None = None  # the table that predicts latency (budget and reports); None: no latency
    memory: MemoryModel | None = None  # the table's memory model (a memory budget); None: no memory prediction

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint (iterations may grow)."""
        return {
            "init": self.init.to_dict(),
            "budget": self.budget.to_dict(),
            "ratios": list(self.ratios),
            "population": self.population,
            "seed": self.seed,
            "score": self.score,
            "forward": asdict(self.forward) if self.score == "forward" else None,
            "batch": self.batch,
            "mutations": self.mutations,
            "elite": self.elite,
            "latency_table": self.latency.identity if self.latency is not None else None,
            "memory_model": self.memory.to_dict() if self.memory is not None else None,
        }


class ForwardScorer:
    """Picklable: scores a genome with the forward method (used by process and Ray executors)."""

    def __init__(self, space: SearchSpace, ratios: Sequence[float], options: ForwardOptions) -> None:
        self.space, self.ratios, self.options = space, tuple(ratios), options

    def __call__(self, genome: Genome) -> float:
        return self.options.score(self.space.decode(genome), self.ratios).score


@dataclass
class HistoryRow:
    candidates: int
    best_score: float
    worst_score: float
    population: int
    wall_s: float
    best_latency_ms: float | None = None  # predicted, of the best member; None without a table (or if infinite)


def _setting_differences(saved: Any, current: dict[str, Any], prefix: str = "") -> list[str]:
    """``name: saved → current`` for every setting that differs (nested settings as ``budget.flops``)."""
    current = json.loads(json.dumps(current))  # JSON turns tuples into lists: compare through the same round trip
    if not isinstance(saved, dict):
        return ["the checkpoint holds no settings"]
    differences = []
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name), current.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and name != "init":
            differences += _setting_differences(old, new, f"{prefix}{name}.")
        else:
            shown = ("a different structure", "this one") if name == "init" else (json.dumps(old), json.dumps(new))
            differences.append(f"{prefix}{name}: {shown[0]} in the checkpoint, {shown[1]} now")
    return differences


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON object (a regular file of bounded size; NaN and Infinity refused)."""
    if not path.is_file():
        raise SearchError(f"cannot read the checkpoint {str(path)!r}: it does not exist or is not a regular file.")
    try:
        if path.stat().st_size > MAX_CHECKPOINT_BYTES:
            raise ValueError("larger than 1 GiB")
        state = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SearchError(f"cannot read the checkpoint {str(path)!r} ({exc}).") from None
    if not isinstance(state, dict) or not str(state.get("format")).startswith(_FORMAT_FAMILY):
        raise SearchError(f"{str(path)!r} is not a maedet-search checkpoint.")
    if state["format"] != CHECKPOINT_FORMAT:
        raise SearchError(
            f"the checkpoint {str(path)!r} has format {state['format']!r}, which kept interpreter hashes of the "
            f"structures already seen, so it cannot be resumed exactly; this maedet reads {CHECKPOINT_FORMAT!r}: "
            "start the search again with --force instead of --resume."
        )
    return state


def _shown(number: int) -> str:
    """A number for a message: in full when short, else only how long it is (10**400 is not worth 400 digits)."""
    return f"{number:,}" if abs(number) < 10**12 else f"a {number.bit_length()}-bit number of"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is not a non-negative whole number")
    return value


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # a whole number of hundreds of digits
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{what} is not a finite number")
    return number


class Search:
    """One search run; ``run`` advances it, ``checkpoint``/``resume`` make it survive interruption."""

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        self._validate(settings)
        self.space = SearchSpace.from_structure(settings.init, settings.budget.resolution)
        self.evaluator = GenomeEvaluator(self.space, settings.ratios)
        self.latency: GenomeLatency | None = (
            settings.latency.genome_latency(self.space) if settings.latency is not None else None
        )
        init = self.space.encode(settings.init)
        self.memory = GenomeMemory(self.space, settings.memory) if settings.memory is not None else None
        over = settings.budget.violations(settings.init, settings.latency, settings.memory)
        if over:
            raise SearchError(f"the initial structure is over budget: {'; '.join(over)}.")
        self.rng = random.Random(settings.seed)
        self.candidates = 0
        self.wall_s = 0.0
        self.history: list[HistoryRow] = []
        self.seen: set[bytes] = {genome_id(init)}
        self._keys: list[tuple[float, Genome]] = []  # (-score, genome), sorted: best first, ties by genome
        self._insert(self._score_batch([init], SerialExecutor())[0], init)
        self.candidates = 1

    @staticmethod
    def _validate(s: SearchSettings) -> None:
        if s.population < 1 or s.batch < 1 or s.iterations < 1 or s.mutations < 1 or s.checkpoint_every < 1:
            raise SearchError("population, batch, iterations, mutations and checkpoint-every must be at least 1.")
        if s.mutations > MAX_MUTATIONS:
            raise SearchError(
                f"mutations must be at most {MAX_MUTATIONS}, got {s.mutations:,}: a child gets 1 to N random steps, "
                "so more makes children unrelated to their parents and every child slower to propose."
            )
        if not 0.0 < s.elite <= 1.0:
            raise SearchError(f"elite must be a fraction in (0, 1], got {s.elite}.")
        if s.score not in ("closed-form", "forward"):
            raise SearchError(f"unknown score {s.score!r}; choose closed-form or forward.")
        if s.score == "forward":  # at the start, with the initial structure: not after hours of searching
            check_forward_memory(s.init, s.forward.batch, s.forward.resolution)
        if s.budget.latency_ms is not None and s.latency is None:
            raise SearchError("a latency budget needs a latency table to predict with (--latency-table).")
        min_layers = 1 + 3 * len(s.init.stages)
        if s.budget.layers is not None and s.budget.layers < min_layers:
            raise SearchError(
                f"impossible budget: {s.budget.layers} conv layers, but a structure with "
                f"{len(s.init.stages)} stages needs at least {min_layers}."
            )

    # ------------------------------------------------------------------ population
    @property
    def population(self) -> list[tuple[float, Genome]]:
        """(score, genome), best first."""
        return [(-neg, g) for neg, g in self._keys]

    @property
    def best(self) -> tuple[float, Genome]:
        neg, genome = self._keys[0]
        return -neg, genome

    def _insert(self, score: float, genome: Genome) -> None:
        key = (-score, genome)
        if len(self._keys) >= self.settings.population:
            if key >= self._keys[-1]:
                return
            self._keys.pop()
        bisect.insort(self._keys, key)

    # ------------------------------------------------------------------ scoring
    def scorer(self) -> Callable[[Genome], float]:
        s = self.settings
        if s.score == "forward":
            return ForwardScorer(self.space, s.ratios, s.forward)
        return self.evaluator.score

    def _score_batch(self, genomes: list[Genome], executor: Executor) -> list[float]:
        return list(executor.map(self.scorer(), genomes))

    # ------------------------------------------------------------------ evolution
    def _pick_parent(self) -> Genome:
        rng, keys = self.rng, self._keys
        if rng.random() < 0.5:
            top = max(1, int(len(keys) * self.settings.elite))
            return keys[int(rng.random() * top)][1]
        return keys[int(rng.random() * len(keys))][1]

    def _propose(self, count: int) -> list[Genome]:
        """``count`` new, within-budget, never-seen children (rejected proposals are not candidates).

        When the population's neighbourhood is used up (every child already seen or over budget), the number of
        mutations per child grows, so a converged population still finds new structures.
        """
        space, rng, budget, evaluator, seen = self.space, self.rng, self.settings.budget, self.evaluator, self.seen
        latency = self.latency
        children: list[Genome] = []
        fresh: set[bytes] = set()
        failures = 0
        max_mutations = self.settings.mutations
        while len(children) < count:
            child: Genome | None = self._pick_parent()
            for _ in range(1 + int(rng.random() * max_mutations)):
                child = space.mutate(child, rng) or child
            h = genome_id(child)
            if h in seen or h in fresh or not budget.admits(evaluator, child, latency, self.memory):
                failures += 1
                if failures % 2000 == 0:
                    max_mutations += 1
                    if max_mutations > self.settings.mutations + MAX_EXTRA_MUTATIONS:
                        raise SearchError(
                            "the search found no new structure within budget in "
                            f"{failures:,} tries; the budget is too tight for this initial structure."
                        )
                continue
            fresh.add(h)
            children.append(child)
        return children

    def run(
        self,
        executor: Executor | None = None,
        *,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[Search], None] | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> Search:
        """Evaluate candidates until ``settings.iterations`` or until ``stop()`` says so (checked between batches).

        A checkpoint is written atomically every ``checkpoint_every`` candidates and when the run stops (always at a
        full-batch boundary, so resuming with the same or a larger ``iterations`` matches an uninterrupted run).
        """
        executor = executor or SerialExecutor()
        s = self.settings
        next_checkpoint = (self.candidates // s.checkpoint_every + 1) * s.checkpoint_every
        started = time.perf_counter() - self.wall_s
        partial = False
        while self.candidates < s.iterations:
            if stop is not None and stop():
                break
            count = min(s.batch, s.iterations - self.candidates)
            partial = count < s.batch
            if partial and checkpoint_dir is not None:
                # The last, short batch is never checkpointed: a resume with more iterations replays it whole,
                # exactly as an uninterrupted longer run would have proposed it.
                self.checkpoint(Path(checkpoint_dir) / CHECKPOINT_NAME)
            children = self._propose(count)
            scores = self._score_batch(children, executor)
            for child, score in zip(children, scores, strict=True):
                self.seen.add(genome_id(child))
                self._insert(score, child)
            self.candidates += len(children)
            self.wall_s = time.perf_counter() - started
            best_ms = self.latency(self._keys[0][1]) if self.latency is not None else None
            self.history.append(
                HistoryRow(
                    self.candidates,
                    -self._keys[0][0],
                    -self._keys[-1][0],
                    len(self._keys),
                    self.wall_s,
                    best_ms if best_ms is not None and math.isfinite(best_ms) else None,
                )
            )
            if progress is not None:
                progress(self)
            if checkpoint_dir is not None and not partial and self.candidates >= next_checkpoint:
                self.checkpoint(Path(checkpoint_dir) / CHECKPOINT_NAME)
                next_checkpoint = (self.candidates // s.checkpoint_every + 1) * s.checkpoint_every
        self.wall_s = time.perf_counter() - started
        if checkpoint_dir is not None and not partial:
            self.checkpoint(Path(checkpoint_dir) / CHECKPOINT_NAME)
        return self

    @property
    def finished(self) -> bool:
        return self.candidates >= self.settings.iterations

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": self.settings.fingerprint(),
            "candidates": self.candidates,
            "wall_s": self.wall_s,
            "population": [[-neg, list(g)] for neg, g in self._keys],
            "rng": [version, list(internal), gauss],
            "seen": base64.b64encode(b"".join(sorted(self.seen))).decode("ascii"),
            "history": [asdict(row) for row in self.history],
        }

    def checkpoint(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.state_dict(), allow_nan=False))

    @classmethod
    def resume(cls, settings: SearchSettings, path: str | Path) -> Search:
        """Continue from a checkpoint; the settings must be those it was written with (iterations may differ).

        Everything read back is checked (types, genome length and limits, finite numbers), so a damaged or edited
        checkpoint is refused in one sentence instead of failing deep inside the search.
        """
        path = Path(path)
        state = _read_checkpoint(path)
        differences = _setting_differences(state.get("settings"), settings.fingerprint())
        if differences:
            raise SearchError(
                f"the checkpoint was written with different search settings ({'; '.join(differences)}); "
                "resume with the same ones."
            )
        search = cls(settings)
        try:
            search._restore(state)
        except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as exc:
            reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc).rstrip(".")
            raise SearchError(f"the checkpoint {str(path)!r} is damaged ({reason}).") from None
        return search

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's state into this search; raises KeyError/TypeError/ValueError on anything malformed."""
        candidates = _whole(state["candidates"], "candidates")
        wall_s = _finite(state["wall_s"], "wall_s")
        keys = sorted((-score, genome) for score, genome in self._checked_population(state["population"]))
        if candidates < len(keys):
            raise ValueError(f"{candidates} candidates but {len(keys)} population members")
        try:
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"its random-number state is not valid: {exc}") from None
        try:
            seen = base64.b64decode(state["seen"], validate=True)
            if len(seen) % GENOME_ID_BYTES:
                raise ValueError(f"{len(seen)} bytes, not a whole number of {GENOME_ID_BYTES}-byte genome ids")
            history = [HistoryRow(**row) for row in state["history"]]
        except (TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"its seen set or history is not valid: {exc}") from None
        for row in history:
            for value in (row.best_score, row.worst_score, row.wall_s):
                _finite(value, "a history row")
            _whole(row.candidates, "a history row")
            _whole(row.population, "a history row")
        self.candidates, self.wall_s, self._keys = candidates, wall_s, keys
        ids = (seen[i : i + GENOME_ID_BYTES] for i in range(0, len(seen), GENOME_ID_BYTES))
        self.seen = set(ids) | {genome_id(genome) for _, genome in keys}
        self.history = history

    def _checked_population(self, members: Any) -> list[tuple[float, Genome]]:
        """(score, genome) pairs that fit this search: the right length, inside the space and the budget."""
        if not isinstance(members, list) or not members:
            raise ValueError("its population is empty" if members == [] else "its population is not a list")
        if len(members) > self.settings.population:
            raise ValueError(f"{len(members)} population members, more than --population {self.settings.population}")
        width = 1 + 4 * self.space.num_stages
        checked = []
        for rank, member in enumerate(members, start=1):
            if not isinstance(member, list) or len(member) != 2:
                raise ValueError(f"population member {rank} is not a [score, genome] pair")
            score, genes = member
            if not isinstance(genes, list) or len(genes) != width:
                raise ValueError(f"population member {rank} is not a genome of {width} whole numbers")
            genome = tuple(_whole(v, f"population member {rank}") for v in genes)
            problem = self._genome_problem(genome)
            if problem:
                raise ValueError(f"population member {rank}: {problem}")
            checked.append((_finite(score, f"population member {rank}'s score"), genome))
        return checked

    def _genome_problem(self, genome: Genome) -> str | None:
        """Why this search cannot have produced ``genome`` (None if it can): mutation keeps channels in
        [8, max_channels] and kernels in {3, 5} unless a gene still holds the initial structure's value, every
        depth is at least 1, and every candidate is a valid structure inside the budget."""
        start = self.space.encode(self.settings.init)
        for i, (gene, initial) in enumerate(zip(genome, start, strict=True)):
            if gene == initial:
                continue
            role = i % 4 if i else 1
            if role in (0, 1) and not 8 <= gene <= self.space.max_channels:
                return f"{_shown(gene)} channels outside [8, {self.space.max_channels}]"
            if role == 2 and gene not in KERNELS:
                return f"kernel {gene} not one of {KERNELS}"
            if role == 3 and gene < 1:
                return f"depth {gene}"
        try:
            self.space.decode(genome)
        except MaeDetError as exc:
            return str(exc).rstrip(".")
        if not self.settings.budget.admits(self.evaluator, genome, self.latency, self.memory):
            return "over the budget"
        return None

    def structure(self, genome: Genome) -> Structure:
        return self.space.decode(genome)
