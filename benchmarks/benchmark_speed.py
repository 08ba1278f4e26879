"""Time and peak memory of one registration per stage, and of one CG solve per solver backend.

One 192x160x256 pair at 2 mm (the generated abdominal phantom with a 12 mm random deformation, or two
label maps given with --labels).  Runs on the CPU with --threads threads and, when CUDA is usable, on the
GPU with each solver backend.  Prints Markdown tables; ratios are against baselines measured in the
same run (the CSR solver on the CPU for the CG solve, the goal for end-to-end times).  Each run also
reports its working spacing and the error of the recovered displacement against the known one (inside the
body), so a faster budget is never reported without its accuracy.

    python benchmarks/benchmark_speed.py --threads 2
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LearnGNSlicer"))

import learngn  # noqa: E402
from learngn.cli.demo import field_error  # noqa: E402
from learngn.device import DEFAULT_WORKING_VOXELS  # noqa: E402
from learngn.phantom import sample_pair  # noqa: E402
from learngn.solver import SolverOptions, cupy_available, solve_regularised  # noqa: E402

GOALS_S = {"cpu": 20.0, "cuda": 0.5}
GN_ITERATION_GOAL_S = 0.05


class PeakMemory:
    """Peak resident memory (CPU, sampled every 5 ms) or peak allocated CUDA memory, per stage."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peaks: Dict[str, float] = {}
        self._stage: Optional[str] = None
        self._running = True
        if device == "cpu":
            threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def _sample(self) -> None:
        while self._running:
            stage = self._stage
            if stage is not None:
                self.peaks[stage] = max(self.peaks.get(stage, 0.0), self._rss_mb())
            time.sleep(0.005)

    def enter(self, stage: str) -> None:
        if self.device == "cuda" and self._stage is not None:
            self.peaks[self._stage] = torch.cuda.max_memory_allocated() / 2 ** 20
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._stage = stage

    def close(self) -> None:
        self.enter("done")
        self._running = False


def time_registration(pair: Tuple, device: str, solver: str, budget: Optional[int]
                      ) -> Tuple[learngn.RegistrationResult, Dict[str, float]]:
    fixed, moving = pair[0], pair[1]
    memory = PeakMemory(device)
    memory.enter("prepare")
    result = learngn.register(fixed, moving, device=device, solver=solver, max_working_voxels=budget,
                              progress=lambda event: memory.enter(event.stage) if event.stage != memory._stage else None)
    memory.close()
    return result, memory.peaks


def time_solve(backend: str, device: str, repeats: int = 5) -> float:
    torch.manual_seed(0)
    shape = (3, 48, 40, 64)  # the control grid of a 192x160x256 volume at stride 4
    diag = torch.rand(shape, device=device) * 0.05
    rhs = torch.randn(shape, device=device) * 0.01
    timings = []
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        solve_regularised(diag, rhs, 0.05, backend=backend, options=SolverOptions())
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return sorted(timings[1:])[len(timings[1:]) // 2]  # median, first call (warm-up) dropped


def runs(cpu_budgets: List[Optional[int]]) -> List[Tuple[str, str, Optional[int]]]:
    """(device, solver, working-voxel budget); None is the device's default budget."""
    out = [("cpu", "torch", budget) for budget in cpu_budgets]
    if torch.cuda.is_available():
        out.append(("cuda", "torch", None))
        if cupy_available():
            out.append(("cuda", "cupy", None))
    return out


def budget_text(budget: Optional[int], device: str) -> str:
    value = budget or DEFAULT_WORKING_VOXELS[device]
    return f"{value / 1e6:g} M" + (" (default)" if budget is None else "")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--cpu-budgets", default="default,4000000",
                        help="working-grid voxel budgets to time on the CPU ('default' = the CPU default)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu_budgets = [None if b.strip() == "default" else int(b) for b in args.cpu_budgets.split(",")]
    pair = sample_pair(size=(192, 160, 256), spacing=2.0, max_mm=12.0, seed=0)
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"pair 192x160x256 at 2 mm; torch {torch.__version__}; {args.threads} CPU threads; GPU: {device_name}\n")

    print("| device | solver | voxel budget | stage | time (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    summary = []
    for device, solver, budget in runs(cpu_budgets):
        run = (lambda: time_registration(pair, device, solver, budget))
        if device == "cuda":
            run()  # warm-up: CUDA context, kernels, CuPy compilation
        result, peaks = run()
        for stage, seconds in result.timings.items():
            peak = peaks.get(stage, float("nan")) if stage != "total" else max(peaks.values())
            print(f"| {device} | {solver} | {budget_text(budget, device)} | {stage} | {seconds:.3f} | {peak:.0f} |")
        per_iteration = result.timings["gauss-newton"] / (result.settings.iterations * result.settings.levels)
        summary.append((device, solver, budget, result, per_iteration))

    print("\n| device | solver | voxel budget | working spacing (mm) | end to end (s) | goal (s) | time / goal | "
          "per GN iteration (s) | per-iteration / 50 ms | error mean / p95 (mm) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for device, solver, budget, result, per_iteration in summary:
        goal = GOALS_S[device]
        total = result.timings["total"]
        error = field_error(result.displacement, pair[4], pair[2])  # inside the phantom's body
        mean, p95 = error["mean_error_mm"], error["p95_error_mm"]
        print(f"| {device} | {solver} | {budget_text(budget, device)} | {result.metrics['working_spacing_mm']:.2f} | "
              f"{total:.3f} | {goal} | {total / goal:.2f} | {per_iteration:.4f} | "
              f"{per_iteration / GN_ITERATION_GOAL_S:.2f} | {mean:.2f} / {p95:.2f} |")

    print("\nOne CG solve on the 48x40x64 control grid (3 axes, tol 1e-3, at most 40 iterations), median of 5:\n")
    print("| backend | device | time (ms) | ratio to CSR on CPU (scipy) |")
    print("|---|---|---|---|")
    baseline = time_solve("scipy", "cpu")
    solves = [("scipy", "cpu", baseline), ("torch", "cpu", time_solve("torch", "cpu"))]
    if torch.cuda.is_available():
        solves.append(("torch", "cuda", time_solve("torch", "cuda")))
        if cupy_available():
            solves.append(("cupy", "cuda", time_solve("cupy", "cuda")))
    for backend, device, seconds in solves:
        print(f"| {backend} | {device} | {1000 * seconds:.2f} | {seconds / baseline:.3f} |")


if __name__ == "__main__":
    main()
