"""Speed and footprint as a user sees them: from the command (or the Slicer module's request) to the result.

Every case runs in a fresh process, timed from its start to its exit by a small wrapper process that also
reads the peak memory (``resource.getrusage(RUSAGE_CHILDREN)``, the largest resident set of the command and
anything it started).  Cases:

* ``demo``: ``learngn demo`` (built-in sample pair);
* ``pair``: ``learngn register`` on a generated 192x160x256 pair at 2 mm (phantom with a 12 mm field);
* ``ct``: ``learngn register`` of the 512x512x141 thorax CT to a copy of itself shifted by (3, -2, 4) mm;
* ``slicer``: the Slicer module's logic against slicer-core's real MRML (a 256^3 pair), with the time outside
  ``register()`` broken down: exporting the volumes, the worker's start and imports, reading, writing, its
  exit, reading the hand-over files and creating the nodes;
* ``slicer-warm``: the same with the warm worker, the second run measured (codes that have one);
* ``slicer-prepared``: the module's default since the warm worker is on by default: the worker is started when
  the module opens and the first Apply comes once it is ready (the time it takes to be ready is reported);
* ``slicer-immediate``: the same, but Apply at the moment the module opens (the worst case).

``slicer`` asks for a new worker process per Apply (the setting off) in codes where that is not the default.

``--code NAME=FOLDER`` runs the cases with another checkout's ``LearnGNSlicer`` folder first on PYTHONPATH
(e.g. ``--code before=/tmp/old/LearnGNSlicer`` for a ``git worktree`` of an older commit), so the old and
the new code are measured in one run.  Prints one table; nothing is written outside ``--workdir``.

    python benchmarks/benchmark_user.py --code before=/tmp/old/LearnGNSlicer --code after=LearnGNSlicer
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "ct" / "thorax_ct.nii.gz"
CT_SHIFT_MM = (3.0, -2.0, 4.0)
PAIR_SIZE = (192, 160, 256)
SLICER_SIZE = (256, 256, 256)

#: Runs ``argv`` and prints {"wall_s", "cpu_s", "max_rss_mb", "returncode"}: the wrapper whose children are
#: measured (CPU time, user + system, depends less on other work on the machine than the wall time).
WRAPPER = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
returncode = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024.0,
                  "returncode": returncode}))
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def environment(code: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def measured(argv: List[str], env: Dict[str, str]) -> Dict[str, float]:
    """Wall time from process start to exit and the peak RSS of ``argv`` (run by the wrapper)."""
    output = subprocess.run([sys.executable, "-c", WRAPPER, *argv], env=env, capture_output=True, text=True,
                            check=True)
    figures = json.loads(output.stdout.strip().splitlines()[-1])
    if figures["returncode"] != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with exit code {figures['returncode']}")
    return figures


def make_inputs(workdir: Path, cases: List[str]) -> Dict[str, Path]:
    """The generated pair and the shifted CT, written once for every code version."""
    import SimpleITK as sitk

    sys.path.insert(0, str(ROOT / "LearnGNSlicer"))
    from learngn.phantom import sample_pair

    files: Dict[str, Path] = {}
    if "pair" in cases:
        fixed, moving = sample_pair(PAIR_SIZE, 2.0, 12.0, seed=0)[:2]
        for role, image in (("pair_fixed", fixed), ("pair_moving", moving)):
            files[role] = workdir / f"{role}.nii.gz"
            sitk.WriteImage(image, str(files[role]), True)
    if "ct" in cases:
        ct = sitk.ReadImage(str(CT))
        shifted = sitk.Resample(ct, ct, sitk.TranslationTransform(3, CT_SHIFT_MM), sitk.sitkLinear, -1024.0,
                                ct.GetPixelID())
        files["ct_fixed"] = CT
        files["ct_moving"] = workdir / "thorax_shifted.nii.gz"
        sitk.WriteImage(shifted, str(files["ct_moving"]), True)
    return files


def run_cli(case: str, code: Path, workdir: Path, files: Dict[str, Path]) -> Dict[str, float]:
    """One command-line case: time, peak memory, bytes written, and the summary's timings."""
    outdir = workdir / f"out-{case}-{abs(hash(str(code))) % 10_000}"
    shutil.rmtree(outdir, ignore_errors=True)
    command = [sys.executable, "-m", "learngn"]
    if case == "demo":
        argv = [*command, "demo", "-o", str(outdir), "--progress", "none"]
    else:
        argv = [*command, "register", str(files[f"{case}_fixed"]), str(files[f"{case}_moving"]), "-o", str(outdir),
                "--progress", "none"]
    figures = measured(argv, environment(code))
    summary = json.loads((outdir / "summary.json").read_text())
    written = folder_bytes(outdir)
    if case == "demo":  # the demo also writes its inputs and the true field: count what a registration writes
        written -= sum((outdir / name).stat().st_size for name in
                       ("fixed.nii.gz", "moving.nii.gz", "fixed_labels.nii.gz", "moving_labels.nii.gz",
                        "true_displacement.nii.gz") if (outdir / name).exists())
    timings = summary.get("timings_s", {})
    result = {**figures, "written_mb": written / 1e6, "register_s": timings.get("total", float("nan")),
              "prealign_s": timings.get("prealign", float("nan")), "gn_s": timings.get("gauss-newton", float("nan")),
              "write_s": timings.get("write", float("nan")), "report_s": timings.get("report", float("nan")),
              "output_s": timings.get("output", float("nan"))}
    if case == "demo":
        result["error_mm"] = summary["demo"]["mean_error_mm"]
    shutil.rmtree(outdir, ignore_errors=True)
    return result


# -- the Slicer module's logic path, in a process of its own ------------------------------------------------

SLICER_CASE = r"""
import json, sys, time
import numpy as np
import slicer
from LearnGNSlicerLib import job as job_module
from LearnGNSlicerLib.logic import RegistrationLogic
from LearnGNSlicerLib.worker import WorkerLauncher

size = tuple(int(v) for v in sys.argv[1].split("x"))
mode = sys.argv[2] if len(sys.argv) > 2 else "cold"
warm = mode == "warm"
marks = {}
def timed(name, function):
    def wrapped(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            marks[name] = marks.get(name, 0.0) + time.perf_counter() - started
    return wrapped
job_module.export_inputs = timed("export", job_module.export_inputs)
job_module.read_outputs = timed("read_outputs", job_module.read_outputs)
job_module.store_outputs = timed("store_outputs", job_module.store_outputs)
start_worker, on_exit = job_module.RegistrationJob._start_worker, job_module.RegistrationJob._on_worker_exit
def start_worker_marked(self, gpu):
    marks["worker_started"] = time.perf_counter()
    return start_worker(self, gpu)
def on_exit_marked(self, returncode):
    marks.setdefault("worker_exited", time.perf_counter())
    return on_exit(self, returncode)
job_module.RegistrationJob._start_worker = start_worker_marked
job_module.RegistrationJob._on_worker_exit = on_exit_marked
load = getattr(job_module.RegistrationJob, "_load_results", None)
if load is not None:  # newer code loads when the worker says "done", before its exit
    def load_marked(self, returncode):
        marks.setdefault("worker_exited", time.perf_counter())
        return load(self, returncode)
    job_module.RegistrationJob._load_results = load_marked

scene = slicer.vtkMRMLScene()
slicer.mrmlScene = scene
k, j, i = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in size[::-1]], indexing="ij")
def volume(name, shift):
    body = ((i - shift) / 0.8) ** 2 + (j / 0.7) ** 2 + (k / 0.9) ** 2 < 1
    organ = ((i - 0.3 - shift) / 0.25) ** 2 + ((j + 0.1) / 0.3) ** 2 + (k / 0.3) ** 2 < 1
    array = np.where(body, 40.0, -1000.0) + np.where(organ, 60.0, 0.0)
    array = (array + np.random.default_rng(0).normal(0, 10, array.shape)).astype(np.int16)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(1.0, 1.0, 1.0)
    slicer.util.updateVolumeFromArray(node, array)
    return node
fixed, moving = volume("fixed", 0.0), volume("moving", 0.04)
first = {}
def progress(event):
    if event.stage == "prepare" and "event" not in first:
        first["event"] = time.perf_counter()
import inspect
has_setting = "warm_worker" in inspect.signature(RegistrationLogic.__init__).parameters
options = {"warm_worker": mode != "cold"} if has_setting else {}
logic = RegistrationLogic(launcher=WorkerLauncher(python=sys.executable), probe_gpu=False, **options)
if warm:  # the first Apply starts the worker; the second is measured
    logic.register(fixed, moving, device="cpu")
    marks.clear()
ready_s = None
if mode in ("prepared", "immediate"):  # the module opened
    opened = time.perf_counter()
    logic.prepare_worker()
    if mode == "prepared":  # the user picks the volumes meanwhile; Apply once the worker is ready
        while not logic.worker().ready:
            logic.worker().poll()
            time.sleep(0.01)
        ready_s = time.perf_counter() - opened
started = time.perf_counter()
result = logic.register(fixed, moving, device="cpu", on_progress=progress)
total = time.perf_counter() - started
idle_rss_mb = None
if mode != "cold":
    with open(f"/proc/{logic.worker().pid}/status") as status:  # what the idle worker holds after the run
        idle_rss_mb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    logic.stop_worker()
timings = result.summary.get("timings_s", {})
worker = marks["worker_exited"] - marks["worker_started"]
breakdown = {
    "total_s": total,
    "request_to_engine_start_s": first["event"] - started,
    "register_s": timings.get("total"),
    "export_s": marks["export"],
    "worker_start_import_s": first["event"] - marks["worker_started"],
    "worker_read_s": timings.get("read"),
    "worker_write_s": timings.get("write"),
    "worker_rest_s": worker - (first["event"] - marks["worker_started"]) - timings.get("read", 0)
                     - timings.get("total", 0) - timings.get("write", 0),
    "read_handover_s": marks["read_outputs"],
    "create_nodes_s": marks["store_outputs"],
}
breakdown["outside_register_s"] = total - breakdown["register_s"]
breakdown["worker_ready_s"], breakdown["idle_worker_rss_mb"] = ready_s, idle_rss_mb
breakdown["other_s"] = breakdown["outside_register_s"] - sum(
    breakdown[k] for k in ("export_s", "worker_start_import_s", "worker_read_s", "worker_write_s", "worker_rest_s",
                           "read_handover_s", "create_nodes_s"))
print(json.dumps(breakdown))
"""


SLICER_MODES = {"slicer": "cold", "slicer-warm": "warm", "slicer-prepared": "prepared",
                "slicer-immediate": "immediate"}
SLICER_ROW_NAMES = {"cold": "", "warm": ", warm worker, 2nd run", "prepared": ", worker started at module open, Apply when ready",
                    "immediate": ", worker started at module open, Apply at once"}


def run_slicer(code: Path, size: tuple, mode: str = "cold") -> Dict[str, float]:
    env = environment(code)
    output = subprocess.run([sys.executable, "-c", SLICER_CASE, "x".join(str(n) for n in size), mode],
                            env=env, capture_output=True, text=True)
    if output.returncode != 0:
        raise RuntimeError(output.stderr[-2000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def table(rows: List[List[str]], header: List[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", action="append", default=[], metavar="NAME=FOLDER",
                        help="a LearnGNSlicer folder to measure (repeatable; default: this checkout's)")
    parser.add_argument("--cases", default="demo,pair,ct,slicer,slicer-warm,slicer-prepared,slicer-immediate",
                        help="comma-separated: demo,pair,ct," + ",".join(SLICER_MODES))
    parser.add_argument("--slicer-size", default="x".join(str(n) for n in SLICER_SIZE))
    parser.add_argument("--workdir", default="/tmp/learngn-benchmark-user")
    args = parser.parse_args(argv)
    codes = dict(item.split("=", 1) for item in args.code) or {"this": str(ROOT / "LearnGNSlicer")}
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = make_inputs(workdir, cases)
    print(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    cli_rows, slicer_rows = [], []
    for case in cases:
        for name, folder in codes.items():
            code = Path(folder).resolve()
            if case in SLICER_MODES:
                mode = SLICER_MODES[case]
                if mode != "cold" and not (code / "LearnGNSlicerLib" / "warm.py").is_file():
                    continue  # that code has no warm worker
                if mode in ("prepared", "immediate") and "prepare_worker" not in (
                        code / "LearnGNSlicerLib" / "logic.py").read_text():
                    continue  # nor one started ahead of the first Apply
                size = tuple(int(v) for v in args.slicer_size.split("x"))
                figures = run_slicer(code, size, mode)
                slicer_rows.append([name + SLICER_ROW_NAMES[mode], *[number(figures.get(k), 2) for k in (
                    "worker_ready_s", "idle_worker_rss_mb",
                    "total_s", "request_to_engine_start_s", "register_s", "outside_register_s", "export_s",
                    "worker_start_import_s",
                    "worker_read_s", "worker_write_s", "worker_rest_s", "read_handover_s", "create_nodes_s",
                    "other_s")]])
            else:
                figures = run_cli(case, code, workdir, files)
                cli_rows.append([case, name, number(figures["wall_s"]), number(figures["cpu_s"]),
                                 number(figures["register_s"]), number(figures["prealign_s"]), number(figures["gn_s"]),
                                 number(figures["output_s"]), number(figures["write_s"]), number(figures["report_s"]),
                                 number(figures["written_mb"]), number(figures["max_rss_mb"], 0),
                                 number(figures.get("error_mm"), 2)])
            print(f"  {case} ({name}) done, load average {os.getloadavg()[0]:.1f}", flush=True)
    if cli_rows:
        print(table(cli_rows, ["case", "code", "start to exit (s)", "CPU time (s)", "register() (s)",
                               "prealign (s)", "gauss-newton (s)", "output stage (s)",
                               "write (s)", "report (s)", "written (MB)", "peak RSS (MB)", "demo error (mm)"]))
    if slicer_rows:
        print(f"\nSlicer logic path, {args.slicer_size} int16 pair, real MRML (slicer-core), seconds:")
        print(table(slicer_rows, ["code", "module open to worker ready", "idle worker RSS after (MB)", "request to nodes", "request to engine start", "register()",
                                  "outside register()", "export", "worker start + imports", "worker read", "worker write", "worker summary (+ exit when waited for)",
                                  "read hand-over", "create nodes", "other (polling)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
