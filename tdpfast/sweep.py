"""``tdpfast sweep``: a grid of measurements over policy x TLB preset x workload x size x
vCPUs, run on any :mod:`tdpfast.scheduler` (this process, ``--jobs N``, a Dask cluster).

Every point builds a fresh VM (the TLB preset on every pCPU, the policy), runs one
workload of :mod:`tdpfast.workload` on it, and measures the model's counters (flushes,
IPIs, TLB misses, walk references, SPTE writes, faults...), the modelled cost (the
``cycles`` counter) and the wall time. The points go into a pandas DataFrame saved as
Parquet (or CSV), with one chart per metric.

A point's key is a hash of the point and of the engine version
(:func:`tdpfast.scheduler.engine_version`): each finished point is written to
``OUT/points/KEY.json`` as soon as its result arrives, and a run skips every point whose
file exists - so a re-run, or a run after Ctrl-C or a lost worker, does only what is
missing, and a rebuilt engine measures everything again.

The grid is a small TOML, JSON or YAML file (YAML needs PyYAML) or command-line lists::

    # sweep.toml: 2 x 2 x 3 x 2 x 2 = 48 points
    policy   = ["kvm", "flush-on-put-root"]
    tlb      = ["skylake", "zen3"]
    workload = ["boot", "notifier", "migration"]
    size     = [2048, 8192]          # guest memory, 4K pages
    vcpus    = [2, 4]
    pcpus    = 2                     # optional: default half the vCPUs (at least 1)
    rounds   = 4                     # optional
    seed     = 1                     # optional
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .errors import InvalidArgumentError

SCHEMA_VERSION = 1
AXES = ("policy", "tlb", "workload", "size", "vcpus")
SETTINGS = {"pcpus": None, "rounds": 4, "seed": 1, "arch": "vmx"}
METRICS = ("remote_tlb_flush", "ipis", "tlb_misses", "walk_refs", "spte_writes", "pf_taken", "cycles",
           "wall_ms")
TABLE_NAME = "sweep"
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


@dataclass(frozen=True)
class Point:
    """One measurement: a workload on one VM shape under one policy."""

    policy: str
    tlb: str
    workload: str
    size: int
    vcpus: int
    pcpus: int
    rounds: int
    seed: int
    arch: str

    def key(self, engine: str) -> str:
        text = json.dumps({"point": asdict(self), "engine": engine}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class Grid:
    """Lists per axis, and the settings every point shares."""

    axes: Dict[str, list]
    settings: Dict[str, object] = field(default_factory=lambda: dict(SETTINGS))

    def points(self) -> List[Point]:
        s = self.settings
        out = []
        for pol, tlb, wl, size, nv in itertools.product(*(self.axes[a] for a in AXES)):
            npc = s["pcpus"] if s["pcpus"] is not None else max(1, nv // 2)
            out.append(Point(pol, tlb, wl, size, nv, npc, s["rounds"], s["seed"], s["arch"]))
        return out

    @classmethod
    def build(cls, spec: Dict[str, object]) -> "Grid":
        """A validated grid from a mapping (a parsed file, merged with CLI lists)."""
        from .policy import Policy
        from .tlbconfig import PRESETS
        from .workload import WORKLOADS

        unknown = set(spec) - set(AXES) - set(SETTINGS)
        if unknown:
            raise InvalidArgumentError(f"unknown grid key(s) {', '.join(sorted(unknown))}; axes: "
                                       f"{', '.join(AXES)}; settings: {', '.join(SETTINGS)}")
        allowed = {"policy": set(Policy.names()), "tlb": set(PRESETS), "workload": set(WORKLOADS)}
        axes = {}
        for a in AXES:
            vals = spec.get(a)
            if vals is None:
                raise InvalidArgumentError(f"the grid has no {a!r} axis")
            vals = vals if isinstance(vals, list) else [vals]
            if not vals:
                raise InvalidArgumentError(f"the grid's {a!r} axis is empty")
            if a in allowed:
                bad = [v for v in vals if v not in allowed[a]]
                if bad:
                    raise InvalidArgumentError(f"unknown {a} {bad[0]!r}; one of: {', '.join(sorted(allowed[a]))}")
            else:
                lo, hi = (512, 1 << 22) if a == "size" else (1, 256)
                vals = [_int(a, v, lo, hi) for v in vals]
            axes[a] = list(dict.fromkeys(vals))          # duplicates would be one point twice
        st = dict(SETTINGS)
        for k in SETTINGS:
            if spec.get(k) is not None:
                st[k] = spec[k]
        if st["pcpus"] is not None:
            st["pcpus"] = _int("pcpus", st["pcpus"], 1, 256)
        st["rounds"] = _int("rounds", st["rounds"], 1, 10000)
        st["seed"] = _int("seed", st["seed"], 0, (1 << 63) - 1)
        if st["arch"] not in ("vmx", "svm"):
            raise InvalidArgumentError(f"arch must be vmx or svm, got {st['arch']!r}")
        return cls(axes, st)


def _int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise InvalidArgumentError(f"{name} must be an integer, got {v!r}")
    try:
        n = int(v)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be an integer, got {v!r}") from None
    if not lo <= n <= hi:
        raise InvalidArgumentError(f"{name} must be in {lo}..{hi}, got {n}")
    return n


def load_grid_file(path: str) -> Dict[str, object]:
    """The mapping in a grid file (.toml, .json, .yaml/.yml), unvalidated."""
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the grid {path}: {e.strerror}") from None
    try:
        if ext == ".toml":
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                try:
                    import tomli as tomllib
                except ImportError:
                    raise InvalidArgumentError("a TOML grid needs Python 3.11+ or tomli; use JSON") from None
            data = tomllib.loads(raw.decode())
        elif ext == ".json":
            data = json.loads(raw)
        elif ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise InvalidArgumentError("a YAML grid needs PyYAML (pip install pyyaml); use TOML or JSON") from None
            data = yaml.safe_load(raw)
        else:
            raise InvalidArgumentError(f"the grid must be .toml, .json or .yaml, got {path}")
    except InvalidArgumentError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser's error is a usage error
        raise InvalidArgumentError(f"cannot parse the grid {path}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("grid"), dict):
        data = {**{k: v for k, v in data.items() if k != "grid"}, **data["grid"]}
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"the grid {path} must be a mapping of axis to values")
    return data


def measure(point: Point) -> dict:
    """The work unit: run the point's workload on a fresh VM; counters, cost, wall time."""
    import numpy as np

    from .policy import Policy
    from .scheduler import current_worker, engine_version
    from .tlbconfig import TLBConfig
    from .vm import VM
    from .workload import WORKLOADS

    vm = VM(arch=point.arch, vcpus=point.vcpus, pcpus=point.pcpus, tlb=TLBConfig.preset(point.tlb),
            policy=Policy.named(point.policy), seed=point.seed, record=False)
    t0 = time.perf_counter_ns()
    WORKLOADS[point.workload](vm, point.size, point.rounds, np.random.default_rng(point.seed))
    wall = time.perf_counter_ns() - t0
    row = asdict(point)
    row.update(vm.stats)
    row.update(wall_ms=wall / 1e6, engine=engine_version(), worker=current_worker())
    return row


@dataclass
class SweepResult:
    table: object                     # pandas.DataFrame, one row per point of the grid that finished
    points: int
    ran: int
    skipped: int
    table_path: Optional[str]
    charts: List[str]
    seconds: float
    interrupted: bool
    per_worker: Dict[str, int]
    scheduler: str
    engine: str

    def as_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "points": self.points, "ran": self.ran,
                "skipped": self.skipped, "finished": len(self.table), "table": self.table_path,
                "charts": self.charts, "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
                "per_worker": dict(sorted(self.per_worker.items())), "scheduler": self.scheduler,
                "engine": self.engine}


def run(grid: Grid, sched, out_dir: str, *, fmt: str = "auto", charts: bool = True,
        metrics: Sequence[str] = METRICS, progress=None,
        on_result: Optional[Callable[[object, dict], None]] = None) -> SweepResult:
    """Measure every point of ``grid`` not already in ``out_dir``, on ``sched``; then write
    the table and the charts of all finished points of the grid."""
    from .scheduler import Unit, drive, engine_version

    engine = engine_version()
    pts_dir = os.path.join(out_dir, "points")
    os.makedirs(pts_dir, exist_ok=True)
    points = grid.points()
    keys = [p.key(engine) for p in points]
    todo = [(k, p) for k, p in zip(keys, points) if not os.path.exists(os.path.join(pts_dir, k + ".json"))]
    skipped = len(points) - len(todo)
    queue = list(todo)
    ran = 0
    per_worker: Dict[str, int] = {}
    t0 = time.monotonic()

    def next_unit():
        if not queue:
            return None
        k, p = queue.pop(0)
        return Unit(k, measure, (p,))

    def take(unit, row: dict) -> None:
        nonlocal ran
        row["key"] = unit.key
        tmp = os.path.join(pts_dir, unit.key + ".json.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(row, f, sort_keys=True)
            os.replace(tmp, os.path.join(pts_dir, unit.key + ".json"))     # whole, or not there
        except BaseException:                  # Ctrl-C mid-write: no half-written file stays
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        ran += 1
        per_worker[row["worker"]] = per_worker.get(row["worker"], 0) + 1
        if on_result:
            on_result(unit, row)

    def tick() -> None:
        if progress:
            progress.show(f"{skipped + ran}/{len(points)} points ({skipped} already done), "
                          f"{len(per_worker)} worker(s), {time.monotonic() - t0:5.1f}s")

    interrupted = False
    try:
        drive(sched, next_unit, take, tick=tick)
    except KeyboardInterrupt:
        interrupted = True
    if progress:
        tick()
        progress.done()
    df = table(out_dir, keys)
    ran = len(df) - skipped          # what is on disk is what finished (an interrupt can fall anywhere)
    path = save_table(df, out_dir, fmt) if len(df) else None
    chart_dir = os.path.join(out_dir, "charts")
    drawn = [os.path.join(chart_dir, f"{m}.png") for m in metrics if m in df]
    if ran == 0 and drawn and all(os.path.exists(c) for c in drawn):
        chart_paths = drawn                         # nothing new since they were drawn
    else:
        chart_paths = draw_charts(df, chart_dir, metrics) if charts and len(df) else []
    return SweepResult(df, len(points), ran, skipped, path, chart_paths, time.monotonic() - t0, interrupted,
                       per_worker, sched.name, engine)


def table(out_dir: str, keys: Sequence[str]):
    """The finished points among ``keys`` as a DataFrame, in grid order."""
    import pandas as pd

    rows = []
    for k in keys:
        p = os.path.join(out_dir, "points", k + ".json")
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                rows.append(json.load(f))
    return pd.DataFrame(rows)


def _parquet_ok() -> bool:
    try:
        import pyarrow  # noqa: F401
        return True
    except ImportError:
        return False


def save_table(df, out_dir: str, fmt: str = "auto") -> str:
    """``OUT/sweep.parquet`` (with pyarrow) or ``OUT/sweep.csv``."""
    if fmt == "auto":
        fmt = "parquet" if _parquet_ok() else "csv"
    path = os.path.join(out_dir, f"{TABLE_NAME}.{fmt}")
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
    return path


def draw_charts(df, chart_dir: str, metrics: Sequence[str] = METRICS) -> List[str]:
    """One PNG per metric: a panel per workload, the metric against guest size, one line
    per (policy, TLB, vCPUs). Empty when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    os.makedirs(chart_dir, exist_ok=True)
    workloads = list(dict.fromkeys(df["workload"]))
    ncol = min(3, len(workloads))
    nrow = (len(workloads) + ncol - 1) // ncol
    out = []
    for m in metrics:
        if m not in df:
            continue
        fig, axs = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        for i, wl in enumerate(workloads):
            ax = axs[i // ncol][i % ncol]
            sub = df[df["workload"] == wl]
            for (pol, tlb, nv), g in sub.groupby(["policy", "tlb", "vcpus"], sort=True):
                g = g.sort_values("size")
                ax.plot(g["size"], g[m], marker="o", label=f"{pol} / {tlb} / {nv} vCPU")
            ax.set_xscale("log", base=2)
            ax.set_title(wl)
            ax.set_xlabel("guest pages (4K)")
            ax.set_ylabel(m)
        for j in range(len(workloads), nrow * ncol):
            axs[j // ncol][j % ncol].axis("off")
        handles, labels = axs[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
        fig.suptitle(f"tdpfast sweep: {m}")
        legend_in = 0.35 + 0.22 * ((len(labels) + 3) // 4)          # legend rows, in inches
        fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
        path = os.path.join(chart_dir, f"{m}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        out.append(path)
    return out


# ---------------------------------------------------------------------------------- command line

def _list(text: str) -> List[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    sw = subparsers.add_parser(
        "sweep", help="measure a grid of policy x TLB x workload x size x vCPUs points (table + charts)",
        description="Run every point of a grid (a TOML/JSON/YAML file and/or comma-separated lists) on "
        "this machine, local processes (--jobs N) or a Dask cluster (--scheduler), and write OUT/sweep."
        "parquet (or .csv) and OUT/charts/METRIC.png. Finished points are kept in OUT/points/ and "
        "skipped when the sweep runs again with the same engine. Exit status 0, 2 on usage errors, "
        "130 on Ctrl-C (the finished points are kept).")
    sw.add_argument("grid", nargs="?", metavar="GRID", help="grid file (.toml, .json, .yaml)")
    for a, what in (("policy", "named policies"), ("tlb", "TLB presets"), ("workload", "workloads"),
                    ("size", "guest sizes in 4K pages"), ("vcpus", "vCPU counts")):
        sw.add_argument(f"--{a}", type=_list, metavar="A,B,...", help=f"{what} (replaces the file's axis)")
    sw.add_argument("--pcpus", type=int, help="pCPUs of every VM (default: half the vCPUs, at least 1)")
    sw.add_argument("--rounds", type=int, help=f"workload rounds (default {SETTINGS['rounds']})")
    sw.add_argument("--seed", type=int, help=f"seed of every point (default {SETTINGS['seed']})")
    sw.add_argument("--arch", choices=("vmx", "svm"))
    sw.add_argument("--out", default="tdpfast-sweep", metavar="DIR", help="output directory (default tdpfast-sweep)")
    sw.add_argument("--format", choices=("auto", "parquet", "csv"), default="auto",
                    help="table format (auto: parquet when pyarrow is installed)")
    sw.add_argument("--no-charts", action="store_true", help="write the table only")
    sw.add_argument("--jobs", type=int, metavar="N", help="run on N local worker processes")
    sw.add_argument("--scheduler", metavar="SPEC", help='a Dask cluster: "local:N" or tcp://HOST:PORT')
    sw.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    sw.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="show progress (default: when stderr is a terminal)")
    sw.add_argument("--no-progress", dest="progress", action="store_false")
    sw.set_defaults(func=cmd)
    return sw


def grid_from_args(args) -> Grid:
    spec: Dict[str, object] = load_grid_file(args.grid) if args.grid else {}
    for a in AXES + tuple(SETTINGS):
        v = getattr(args, a, None)
        if v is not None:
            spec[a] = v
    return Grid.build(spec)


def cmd(args) -> int:
    from .scheduler import ProgressLine, engine_version, open_scheduler, parse_spec

    grid = grid_from_args(args)                       # validate everything before working
    spec = parse_spec(args.jobs, args.scheduler)
    if args.format == "parquet" and not _parquet_ok():
        raise InvalidArgumentError('--format parquet needs pyarrow (pip install "tdpfast[dask]")')
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise InvalidArgumentError('tdpfast sweep needs pandas: pip install "tdpfast[dask]"') from None
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    npts = len(grid.points())
    if not args.json:
        print(f"tdpfast sweep: {npts} points ({' x '.join(str(len(grid.axes[a])) for a in AXES)}), "
              f"scheduler {spec}, out {args.out}", file=sys.stderr)
    all_done = all(os.path.exists(os.path.join(args.out, "points", p.key(engine_version()) + ".json"))
                   for p in grid.points())
    if all_done:
        spec = "inprocess"                            # nothing to measure: no workers to start
    try:
        sched = open_scheduler(spec)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    with sched:
        res = run(grid, sched, args.out, fmt=args.format, charts=not args.no_charts,
                  progress=ProgressLine(show))
    if args.json:
        print(json.dumps(res.as_json(), indent=2))
    else:
        state = "INTERRUPTED: " if res.interrupted else ""
        where = (f"on {res.scheduler}" if not all_done else
                 f"(every point was already in {os.path.join(args.out, 'points')}: no workers started)")
        print(f"{state}{len(res.table)} of {res.points} points finished ({res.ran} measured now, "
              f"{res.skipped} already done) in {res.seconds:.1f}s {where}")
        for w, n in sorted(res.per_worker.items()):
            print(f"  {w:28s} {n:5d} points")
        if res.table_path:
            print(f"table: {res.table_path}")
        if res.charts:
            print(f"charts: {os.path.dirname(res.charts[0])}/ ({', '.join(os.path.basename(c) for c in res.charts)})")
    return EXIT_INTERRUPTED if res.interrupted else EXIT_OK
