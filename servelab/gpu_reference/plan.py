"""The steps of a GPU reference run, and the files each one writes.

A step is a command line (`python -m servelab ...`) or a function of this package, run in
order. Some command lines depend on what an earlier step measured (the ceiling gives the
objective; the served runs decide which two settings get a max-rate search), so each step
builds its command line when its turn comes, from the Run that holds the folder and the options.

The order is the order of value: if the time budget runs out, what is left undone is what
matters least: the less telling settings and their twins, then the max-rate searches.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servelab.paths import VARIANTS_DIR

MODELS = ("minilm", "bert-base")  # the served model first: the ceiling and served runs use it
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Scale:
    """How long each measurement runs. full: the GPU machine (the plan fits its 8-minute slot);
    rehearsal: the same plan on a CPU, every step short, to prove it runs end to end."""

    batch_sizes: tuple[int, ...]  # ceiling and profiles
    lengths: tuple[int, ...]  # profiles' padded lengths
    profile_seconds: float  # timed seconds per profile shape
    ceiling_seconds: float  # timed seconds per ceiling batch size
    run_seconds: float  # each served load
    drain_s: float  # longest wait for answers after a load
    max_rate_steps: int
    rates: tuple[str, ...] = ("0.5x", "2x")  # x the ceiling


SCALES = {
    "full": Scale(batch_sizes=(1, 8, 32, 64, 128, 256), lengths=(16, 32, 64), profile_seconds=0.1,
                  ceiling_seconds=1.0, run_seconds=5, drain_s=3, max_rate_steps=4),
    "rehearsal": Scale(batch_sizes=(1, 4, 16), lengths=(16, 32), profile_seconds=0.05,
                       ceiling_seconds=0.5, run_seconds=3, drain_s=5, max_rate_steps=2),
}


@dataclass(frozen=True)
class Served:
    """One server setting of the served runs: a variant and its extra flags."""

    variant: str
    flags: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """thread_offloaded; multi_process-4 (its flags' values)."""
        return "-".join([self.variant, *(f for f in self.flags if not f.startswith("--"))])


def served_settings(variants_dir: Path = VARIANTS_DIR) -> list[Served]:
    """The settings compared: thread_offloaded (the guide's best), slo_aware (it plans batches),
    and multi_process with 8, 4 and 2 front ends where that variant exists."""
    settings = [Served("thread_offloaded"), Served("slo_aware")]
    if (variants_dir / "multi_process.py").is_file():
        # 8 front ends second: the settings first in this list are the ones sure to run, and 8
        # is the one expected to reach the ceiling (4 left the H200's model process 0.28x).
        settings[1:1] = [Served("multi_process", ("--front-ends", "8"))]
        settings += [Served("multi_process", ("--front-ends", str(n))) for n in (4, 2)]
    return settings


CEILING = "ceiling/ceiling.json"  # the pipeline's, from texts: every served run's denominator
TOKEN_IDS_CEILING = "ceiling/token-ids.json"  # the model on token ids: multi_process's model process

# Settings served, with their emulated twins, before the other profiles; the rest after them.
EMULATED_FIRST = 3


@dataclass
class Options:
    device: str = "cuda"
    scale: str = "full"
    minilm: Path | None = None  # a model folder; None: the packaged MiniLM
    random_weights: bool = False  # replace the MiniLM's weights with random ones of its shapes
    server_cores: list[int] = field(default_factory=list)
    locust_cores: list[int] = field(default_factory=list)
    load_processes: int = 1
    budget_s: float = 480.0
    work: Path = Path("/tmp/servelab-gpu-reference")  # models: too big to bring back


@dataclass
class Step:
    name: str
    what: str
    outputs: list[str]  # paths under the run's folder, once the step has run
    estimate_s: Callable[[Scale], float]
    argv: Callable[[Run], list[str]] | None = None  # a command line, built when its turn comes
    call: Callable[[Run], None] | None = None  # or a function of this package
    needs: tuple[str, ...] = ()  # steps that must have succeeded first


@dataclass
class Run:
    """The folder of one reference run, its options, and what earlier steps measured."""

    out: Path
    options: Options

    @property
    def scale(self) -> Scale:
        return SCALES[self.options.scale]

    def model_dir(self, model: str) -> Path:
        return self.options.work / "models" / model

    def profile_path(self, model: str, dtype: str) -> Path:
        return self.out / "profiles" / f"{model}-{dtype}.json"

    @property
    def ceiling_path(self) -> Path:
        return self.out / CEILING

    @property
    def token_ids_ceiling_path(self) -> Path:
        return self.out / TOKEN_IDS_CEILING

    def objective_ms(self) -> float:
        """10x the pipeline's batch-1 time in the ceiling: slo_aware's own default, so that every
        variant is judged by the objective slo_aware plans against."""
        points = json.loads(self.ceiling_path.read_text())["by_batch_size"]
        batch_one = next(p for p in points if p["batch_size"] == 1)
        return round(10_000 / batch_one["seq_per_s"], 1)

    def batch_flags(self) -> list[str]:
        """Batches up to the ceiling's best batch size, and a queue of four such batches. The
        variants' defaults (16 and 64) suit the 2-core CPU; on the H200 they held multi_process
        at the ceiling's batch-16 speed, half its best."""
        best = int(json.loads(self.ceiling_path.read_text())["best_batch_size"])
        return ["--max-batch-size", str(best), "--max-queue", str(4 * best)]

    def served_csv(self, setting: Served, emulated: bool) -> Path:
        return self.out / ("emulated" if emulated else "served") / f"{setting.name}.csv"

    def best_two(self) -> list[Served]:
        """The two settings whose real-device runs achieved the most under 2x overload."""
        from servelab.gpu_reference.summary import served_rows

        rows = [r for r in served_rows(self) if not r["emulated"] and r["rate"] == self.scale.rates[-1]]
        rows.sort(key=lambda r: r.get("achieved_rate") or 0, reverse=True)
        by_name = {s.name: s for s in served_settings()}
        return [by_name[r["setting"]] for r in rows[:2] if r["setting"] in by_name]


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "servelab", *args]


def _cores(cores: list[int]) -> str:
    return ",".join(map(str, cores)) if cores else "none"


def _csv(values) -> str:
    return ",".join(map(str, values))


def profile_step(model: str, dtype: str) -> Step:
    def argv(run: Run) -> list[str]:
        s = run.scale
        return _python("profile", "--model", str(run.model_dir(model)), "--device", run.options.device,
                       "--dtype", dtype, "--batch-sizes", _csv(s.batch_sizes), "--lengths", _csv(s.lengths),
                       "--min-seconds", str(s.profile_seconds),
                       "--cores", _cores(run.options.server_cores[:1]),
                       "--out", str(run.profile_path(model, dtype)))

    return Step(f"profile-{model}-{dtype}", f"{model}'s forward pass alone in {dtype}, by batch and length",
                [f"profiles/{model}-{dtype}.json"],
                lambda s: 12 + len(s.batch_sizes) * len(s.lengths) * (s.profile_seconds + 0.1),
                argv=argv, needs=("models",))


def ceiling_step(from_token_ids: bool = False) -> Step:
    path = TOKEN_IDS_CEILING if from_token_ids else CEILING

    def argv(run: Run) -> list[str]:
        s = run.scale
        return _python("ceiling", "--model", str(run.model_dir("minilm")), "--device", run.options.device,
                       "--batch-sizes", _csv(s.batch_sizes), "--min-seconds", str(s.ceiling_seconds),
                       "--cores", _cores(run.options.server_cores[:1]), "--loadgen-cores", "none",
                       "--out", str(run.out / path), *(["--from-token-ids"] if from_token_ids else []))

    if from_token_ids:
        name, what = "ceiling-token-ids", ("the model's work on token ids by batch size, as multi_process's "
                                           "model process does it: that process's own ceiling")
    else:
        name, what = "ceiling", "the bare pipeline's sequences per second by batch size: the denominator"
    return Step(name, what, [path, path.replace(".json", ".csv")],
                lambda s: 12 + len(s.batch_sizes) * s.ceiling_seconds * 1.3, argv=argv, needs=("models",))


def served_step(setting: Served, emulated: bool) -> Step:
    kind = "emulated" if emulated else "served"

    def argv(run: Run) -> list[str]:
        s, o = run.scale, run.options
        device = f"emulated:{run.profile_path('minilm', 'float32')}" if emulated else o.device
        return _python("sweep", "--variants", setting.variant, "--rates", _csv(s.rates),
                       "--duration", str(s.run_seconds), "--drain-s", str(s.drain_s),
                       "--model", str(run.model_dir("minilm")), "--device", device,
                       "--ceiling", str(run.ceiling_path), "--slo-ms", str(run.objective_ms()),
                       "--server-cores", _cores(o.server_cores), "--locust-cores", _cores(o.locust_cores),
                       "--load-processes", str(o.load_processes), "--no-bracket", "--no-progress",
                       "--out", str(run.served_csv(setting, emulated)),
                       "--", *setting.flags, *_server_flags(setting, run))

    needs = ("ceiling", "profile-minilm-float32") if emulated else ("ceiling",)
    device = "the device emulated from the float32 profile" if emulated else "the real device"
    return Step(f"{kind}-{setting.name}", f"{setting.name} at 0.5x and 2x the ceiling on {device}",
                [f"{kind}/{setting.name}.csv"],
                lambda s: 15 + len(s.rates) * (s.run_seconds + 4), argv=argv, needs=needs)


def _server_flags(setting: Served, run: Run) -> list[str]:
    """slo_aware plans its batches against the same objective the runs are judged by; the others
    batch up to the ceiling's best batch size (Run.batch_flags)."""
    if setting.variant == "slo_aware":
        return ["--slo-ms", str(run.objective_ms())]
    return run.batch_flags()


def max_rate_step(rank: int) -> Step:
    def argv(run: Run) -> list[str]:
        best = run.best_two()
        if len(best) <= rank:
            raise PlanError(f"no served run to rank {rank + 1}: the served runs failed")
        setting, s, o = best[rank], run.scale, run.options
        ceiling = json.loads(run.ceiling_path.read_text())["ceiling_seq_per_s"]
        return _python("bench", "--variant", setting.variant, "--find-max-rate",
                       "--rate", f"{0.7 * ceiling:.1f}",
                       "--max-rate-steps", str(s.max_rate_steps), "--duration", str(s.run_seconds),
                       "--drain-s", str(s.drain_s), "--model", str(run.model_dir("minilm")),
                       "--device", o.device, "--ceiling", str(run.ceiling_path),
                       "--slo-ms", str(run.objective_ms()), "--server-cores", _cores(o.server_cores),
                       "--locust-cores", _cores(o.locust_cores), "--load-processes", str(o.load_processes),
                       "--no-bracket", "--results-dir", str(run.out / "max_rate"), "--tag", f"best{rank + 1}",
                       "--", *setting.flags, *_server_flags(setting, run))

    return Step(f"max-rate-{rank + 1}", f"the highest rate with p99 within the objective, setting ranked "
                f"{rank + 1} at 2x", [f"max_rate/runs/*_best{rank + 1}/summary.json"],
                lambda s: 15 + s.max_rate_steps * (s.run_seconds + 4), argv=argv,
                needs=("ceiling",))  # and a served run to rank, or it fails with a PlanError


class PlanError(RuntimeError):
    """A step cannot be built from what the earlier steps left."""


def plan(settings: list[Served] | None = None) -> list[Step]:
    from servelab.gpu_reference import steps

    settings = served_settings() if settings is None else settings
    first, later = settings[:EMULATED_FIRST], settings[EMULATED_FIRST:]
    return [
        Step("environment", "versions, the GPU, torch's view of it", ["environment.json"],
             lambda s: 5, call=steps.environment),
        Step("models", "MiniLM (or a random-weight copy of it) and a random BERT-base fill-mask model",
             ["models.json"], lambda s: 20, call=steps.models),
        ceiling_step(),
        profile_step("minilm", "float32"),
        ceiling_step(from_token_ids=True),
        *(served_step(s, emulated=False) for s in first),
        profile_step("minilm", "float16"),
        profile_step("bert-base", "float32"),
        profile_step("bert-base", "float16"),
        *(served_step(s, emulated=True) for s in first),
        *(served_step(s, emulated=False) for s in later),
        *(served_step(s, emulated=True) for s in later),
        max_rate_step(0),
        max_rate_step(1),
    ]


def describe(steps: list[Step], scale: Scale) -> str:
    lines = [f"{'step':32} {'~s':>5}  files", "-" * 78]
    for step in steps:
        lines.append(f"{step.name:32} {step.estimate_s(scale):5.0f}  {', '.join(step.outputs)}")
    lines.append(f"{'total':32} {sum(step.estimate_s(scale) for step in steps):5.0f}")
    return "\n".join(lines)
