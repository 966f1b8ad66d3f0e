"""Where a finished workflow run spent its time: ``python -m vlmerge.bench demo [--log FILE] [--against FILE]``.

Reads the run's Snakemake log (by default the newest ``.snakemake/log/*.snakemake.log`` under the current
directory) and each job's own log. Per rule it sums the jobs' wall time and splits it three ways:

- start-up: from the job's start to the first line its stage logs (interpreter, imports, argument parsing),
- loops: the ``done in`` figures of the stage's progress lines (training steps with their validations,
  evaluation and gram batches),
- other: the rest (loading checkpoints and data, writing outputs, the process's exit).

It also reports how many jobs ran at once over the run: seconds with no job, one job and several, and the
job-seconds as a share of cores × wall time (how well the run filled the machine). Times come from the logs'
one-second timestamps, so figures are good to about a second per job. Nothing is run.

``--against`` names a baseline run's log (another checkout's run of the same workflow, e.g. an older
commit's on the same machine): both reports are printed, then each rule's job-seconds and the run's wall
time and job-seconds as ratios of the baseline's, which carry from one machine to another where the
absolute figures do not.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vlmerge.errors import InputError

_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_FIELD = re.compile(r"^\s+(jobid|log|wildcards): (.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")
_CORES = re.compile(r"^Provided cores: (\d+)")
_LINE_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d) ")
_DONE_IN = re.compile(r" done in ([0-9.]+)s$")


@dataclass
class Job:
    rule: str
    start: dt.datetime
    log: str = ""
    wildcards: str = ""
    end: dt.datetime | None = None
    startup: float = 0.0
    loops: float = 0.0

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds() if self.end else 0.0


@dataclass
class Run:
    path: Path
    cores: int
    jobs: list[Job] = field(default_factory=list)

    @property
    def wall(self) -> float:
        done = [j for j in self.jobs if j.end]
        return (max(j.end for j in done if j.end) - min(j.start for j in done)).total_seconds() if done else 0.0


def newest_log(root: Path) -> Path:
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise InputError(f"no Snakemake log under {root / '.snakemake' / 'log'}: run the workflow first (make demo)")
    return logs[-1]


def parse_run(path: Path, root: Path) -> Run:
    """The jobs of one Snakemake log, each with the start-up and loop seconds read from its own log."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise InputError(f"{path}: cannot read the Snakemake log ({err.strerror})") from None
    cores, stamp, rule = 1, None, None
    jobs: dict[str, Job] = {}
    pending: Job | None = None
    for line in lines:
        if m := _CORES.match(line):
            cores = int(m.group(1))
        elif m := _STAMP.match(line):
            stamp = dt.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif (m := _RULE.match(line)) and stamp is not None:
            rule, pending = m.group(1), Job(m.group(1), stamp)
        elif (m := _FIELD.match(line)) and pending is not None and rule is not None:
            key, value = m.groups()
            if key == "jobid":
                jobs[value] = pending
            elif key == "log":
                pending.log = value.split(" (")[0].split(",")[0].strip()
            else:
                pending.wildcards = value
        elif (m := _FINISHED.match(line)) and stamp is not None and m.group(1) in jobs:
            jobs[m.group(1)].end = stamp
    run = Run(path, cores, [j for j in jobs.values() if j.end])
    for job in run.jobs:
        _read_job_log(job, root)
    return run


def _read_job_log(job: Job, root: Path) -> None:
    log = root / job.log if job.log else None
    if log is None or not log.is_file():
        return
    first = None
    for line in log.read_text(errors="replace").splitlines():
        if (m := _LINE_TIME.match(line)) and first is None:
            hour, minute, second = map(int, m.groups())
            first = job.start.replace(hour=hour, minute=minute, second=second)
            if first < job.start:  # the job crossed midnight
                first += dt.timedelta(days=1)
        if m := _DONE_IN.search(line):
            job.loops += float(m.group(1))
    if first is not None:
        job.startup = max(0.0, (first - job.start).total_seconds())


def concurrency(run: Run) -> dict[int, float]:
    """Seconds of the run during which 0, 1, 2, … jobs were running."""
    events = sorted([(j.start, 1) for j in run.jobs] + [(j.end, -1) for j in run.jobs if j.end])
    seconds: dict[int, float] = defaultdict(float)
    running, last = 0, events[0][0] if events else None
    for when, change in events:
        if last is not None:
            seconds[running] += (when - last).total_seconds()
        running, last = running + change, when
    return {n: s for n, s in seconds.items() if s > 0}


def report(run: Run) -> str:
    by_rule: dict[str, list[Job]] = defaultdict(list)
    for job in run.jobs:
        by_rule[job.rule].append(job)
    total = sum(j.seconds for j in run.jobs)
    wall = run.wall
    lines = [
        f"workflow run {run.path.name}: {len(run.jobs)} jobs on {run.cores} cores, "
        f"{int(wall // 60)} min {wall % 60:.0f} s wall",
        f"  job-seconds {total:.0f} = {total / max(wall * run.cores, 1e-9):.0%} of cores × wall",
        "  jobs running at once: " + ", ".join(f"{n}: {s:.0f} s" for n, s in sorted(concurrency(run).items()) if s > 0),
        f"  {'rule':18s} {'jobs':>4s} {'wall s':>7s} {'start-up s':>10s} {'loops s':>8s} {'other s':>8s} "
        f"{'start-up/job':>12s}",
    ]
    for rule, jobs in sorted(by_rule.items(), key=lambda kv: -sum(j.seconds for j in kv[1])):
        seconds = sum(j.seconds for j in jobs)
        startup = sum(j.startup for j in jobs)
        loops = sum(min(j.loops, j.seconds - j.startup) for j in jobs)
        lines.append(
            f"  {rule:18s} {len(jobs):4d} {seconds:7.0f} {startup:10.0f} {loops:8.0f} "
            f"{seconds - startup - loops:8.0f} {startup / len(jobs):12.1f}"
        )
    startup = sum(j.startup for j in run.jobs)
    loops = sum(min(j.loops, j.seconds - j.startup) for j in run.jobs)
    other = total - startup - loops
    lines.append(f"  {'total':18s} {len(run.jobs):4d} {total:7.0f} {startup:10.0f} {loops:8.0f} {other:8.0f}")
    return "\n".join(lines)


def compare(run: Run, baseline: Run) -> str:
    """Each rule's job-seconds, the wall time and the job-seconds of ``run`` against ``baseline``'s."""

    def per_rule(r: Run) -> dict[str, float]:
        seconds: dict[str, float] = defaultdict(float)
        for job in r.jobs:
            seconds[job.rule] += job.seconds
        return seconds

    ours, theirs = per_rule(run), per_rule(baseline)

    def ratio(a: float, b: float) -> str:
        return f"x{a / b:.2f}" if b > 0 else "new"

    total, base_total = sum(ours.values()), sum(theirs.values())
    lines = [
        f"against {baseline.path.name}: wall {run.wall:.0f} s vs {baseline.wall:.0f} s "
        f"({ratio(run.wall, baseline.wall)}), job-seconds {total:.0f} vs {base_total:.0f} ({ratio(total, base_total)})",
        f"  {'rule':18s} {'job-s':>7s} {'baseline':>9s} {'ratio':>6s}",
    ]
    for rule in sorted(ours.keys() | theirs.keys(), key=lambda r: -max(ours.get(r, 0.0), theirs.get(r, 0.0))):
        a, b = ours.get(rule, 0.0), theirs.get(rule, 0.0)
        lines.append(f"  {rule:18s} {a:7.0f} {b:9.0f} {ratio(a, b) if a > 0 else 'gone':>6s}")
    return "\n".join(lines)


def _read(path: Path) -> Run:
    """A run from its Snakemake log; job logs are read relative to the directory that holds ``.snakemake/``."""
    root = path.parents[2] if path.parent.name == "log" and path.parent.parent.name == ".snakemake" else Path.cwd()
    return parse_run(path, root)


def run(log: str | None = None, against: str | None = None) -> None:
    """Print the report of ``log`` (default: the newest run under the current directory), and with
    ``against`` the baseline run's report and the comparison of the two."""
    this = _read(Path(log).resolve() if log else newest_log(Path.cwd()))
    print(report(this))
    if against is not None:
        path = Path(against).resolve()
        if not path.is_file():
            raise InputError(f"--against {against}: no such Snakemake log")
        baseline = _read(path)
        print("\nbaseline " + report(baseline))
        print("\n" + compare(this, baseline))
