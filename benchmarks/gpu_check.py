"""Staged device checks: one command per stage, each inside a fixed time budget.

    bash benchmarks/gpu_check.sh kernels                  # on the GPU machine
    bash benchmarks/gpu_check.sh model
    GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh kernels  # the same steps on the CPU, tiny shapes
    python -m benchmarks.gpu_check --list                 # the stages, their steps and caps

A stage is a list of steps (:data:`STAGES`). Each step is one subprocess with a time cap; the caps
of a stage add up to at most the stage budget (``GPU_CHECK_BUDGET_S``, 480 s by default, which
leaves the rest of a 600 s device call for a decision to rerun). A step may use the time earlier
steps left unused, never the time the later steps' caps hold, so a step that hangs costs only
its own share. Every step runs even when an earlier one failed; the exit status is non-zero when
any step failed, timed out or was left without time.

Fail loudly: pytest steps run with ``--maxfail`` (not ``-x``), ``--fail-on-skip`` and
``--require-backends`` (tests/conftest.py), and their JUnit report must show cases and no skip;
the build sets ``STZSAR_REQUIRE_EXTENSION=1``; the backend step asserts every op's GPU backends
with ``stzsar.ops.dispatch.require_backends``.

The dry run (``GPU_CHECK_DRY=1`` or ``--dry``) runs every step on the CPU: the backends ``cpu``
and ``triton`` (Triton's interpreter), tiny shapes, inductor on the CPU, and the extension the
install built (``GPU_CHECK_DRY_BUILD=1`` compiles one, CPU only, outside the package folder).

Output: ``$OUT/gpu_check-<stage>.json`` (commit, dirty flag, GPU, versions, the NVDEC probe,
each step's status, seconds and figures) and ``$OUT/gpu_check-<stage>.log`` (every step's
output), two files per stage because a device call returns at most eight. ``OUT`` defaults to
``gpu_out/``. Caches live in ``.gpu_cache/`` inside the tree (Triton, inductor, the extension
keyed by its sources, the installed wheels), so a rerun on a warm machine skips the compiles.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 480
# The dry run's budget: the CPU, Triton's interpreter and inductor's C++ compiles on two shared
# cores take longer than the GPU; its caps only stop a hang (it normally takes about 4 minutes).
DRY_BUDGET_S = 900
CACHE = ROOT / ".gpu_cache"
WHEELS = ROOT / ".whl"
# Written by benchmarks/fetch_gpu_wheels.sh: the commit and dirty flag of the tree the wheels
# travel with, for the device machine, whose copy of the tree has no .git.
TREE_STATE = WHEELS / "tree-state.json"
MAXFAIL = 5
LOG_TAIL_LINES = 40

PY = "{py}"  # placeholders filled in when a step starts
WORK = "{work}"


@dataclass(frozen=True)
class Step:
    """One step of a stage.

    ``command`` runs on the GPU machine, ``dry`` in the dry run (``None``: the same command).
    ``kind`` ``"pytest"`` adds the fail-loudly options and reads the JUnit report; ``"bench"``
    reads the JSON the benchmark wrote to ``{work}/<name>.json``. ``cap_s`` is the time the step
    is guaranteed; ``dry_cap_s`` replaces it in the dry run."""

    name: str
    cap_s: int
    command: Tuple[str, ...]
    dry: Optional[Tuple[str, ...]] = None
    dry_cap_s: Optional[int] = None
    kind: str = "cmd"
    env: Mapping[str, str] = field(default_factory=dict)
    doc: str = ""
    workers: Optional[int] = None  # at most this many pytest-xdist workers (pytest steps on the GPU)


def _self(*args: str) -> Tuple[str, ...]:
    """A probe of this module in its own process (a crash or a hang there stays in the step)."""
    return (PY, "-m", "benchmarks.gpu_check", "--probe", *args)


def _pytest(*args: str) -> Tuple[str, ...]:
    return (PY, "-X", "faulthandler", "-m", "pytest", *args)


def _kernels_bench(op: str, name: str, gpu_dims: Sequence[str], dry_dims: Sequence[str], peers: bool,
                   dry_peers: bool = False) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(GPU command, dry-run command) of one ``benchmarks.kernels`` run; the peers run in the dry
    run of one benchmark only (Triton's interpreter takes seconds per call)."""
    base = (PY, "-m", "benchmarks.kernels", "--op", op, "--json-out", f"{WORK}/{name}.json")
    extra = ("--peers",) if peers and _kernels_has_peers() else ()
    gpu = base + ("--shape", "k400", "--dtype", "bfloat16", *gpu_dims) + extra
    dry = base + ("--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--no-memory", "--repeats", "1", "--warmup", "0",
                  *dry_dims) + (extra if dry_peers else ())
    return gpu, dry


def _kernels_has_peers() -> bool:
    """Whether benchmarks/kernels.py offers ``--peers`` (the published MaxSim kernels as optional
    baselines); read from its source so that the runner never imports torch."""
    try:
        return '"--peers"' in (ROOT / "benchmarks" / "kernels.py").read_text()
    except OSError:
        return False


# Shapes (docs/kernels.md): K400 evaluation per GPU B=8, T=16, C=400, Nw=32; ViT-B/16 Np=196,
# D=512; ViT-L/14 Np=256, D=768. The k400 preset of benchmarks/kernels.py has B=32.
_B16 = ("--batch", "8")
_L14 = ("--batch", "8", "--patches", "256", "--dim", "768")
_MAXSIM_B16 = _kernels_bench("maxsim", "bench-maxsim-b16", _B16, (), peers=True, dry_peers=True)
_MAXSIM_L14 = _kernels_bench("maxsim", "bench-maxsim-l14", _L14, ("--patches", "7", "--dim", "48"), peers=False)
_STI_B16 = _kernels_bench("sti", "bench-sti-b16", _B16, (), peers=False)

# Autotuning off where correctness is checked: one compile per shape and dtype (Np, Nw and D are
# compile-time constants of the Triton kernels), not one per candidate configuration.
_NO_AUTOTUNE = {"STZSAR_TRITON_AUTOTUNE": "0"}

PEER_MODULES = ("flash_maxsim", "late_interaction_kernels")
MODEL_MODULES = ("open_clip", "ftfy", "wcwidth", "av")

COMMON_HEAD = (
    Step("env", 15, _self("env"), dry_cap_s=45, doc="python, torch, CUDA, Triton, nvcc, driver; GPU name, sm, memory; NVDEC (libnvcuvid)"),
)

STAGES: Dict[str, List[Step]] = {
    "kernels": [
        *COMMON_HEAD,
        Step("wheels", 20, _self("wheels", *PEER_MODULES), dry_cap_s=20, doc="the carried wheels installed into .gpu_cache/site where not importable"),
        Step("build", 130, _self("build"), _self("build", "--dry"), dry_cap_s=60,
             doc="stzsar._C for sm_90 only, STZSAR_REQUIRE_EXTENSION=1 (cached by its sources)"),
        Step("backends", 15, _self("backends", "cuda", "cuda,triton"), _self("backends", "cpu", "cpu,triton"), dry_cap_s=45,
             doc="require_backends: the cuda and triton backends of every op (dry: cpu, triton)"),
        Step("ops", 110, _pytest("tests/test_gpu_ops.py", "-m", "not inductor"), kind="pytest", env=_NO_AUTOTUNE, dry_cap_s=200,
             doc="every op forward and backward on both GPU backends vs float64, real and odd shapes, fp32/bf16/fp16, autocast"),
        Step("inductor", 55, _pytest("tests/test_gpu_ops.py", "-m", "inductor"), kind="pytest", env=_NO_AUTOTUNE, dry_cap_s=200, workers=2,
             doc="STIModule forward and backward, torch.compile(fullgraph=True, backend='inductor') vs eager"),
        # The peers autotune their kernels on first use (cold: tens of candidates), hence the cap.
        Step("bench-maxsim-b16", 70, _MAXSIM_B16[0], _MAXSIM_B16[1], kind="bench", dry_cap_s=80,
             doc="spatial op, ViT-B/16 K400 eval shape, bf16: fused vs naive vs matmul vs the peers, peak memory"),
        Step("bench-maxsim-l14", 30, _MAXSIM_L14[0], _MAXSIM_L14[1], kind="bench", dry_cap_s=80, doc="spatial op, ViT-L/14 shape (Np=256, D=768)"),
        Step("bench-sti-b16", 35, _STI_B16[0], _STI_B16[1], kind="bench", dry_cap_s=80, doc="the whole STI step, fused vs naive, bf16"),
    ],
    "model": [
        *COMMON_HEAD,
        Step("wheels", 20, _self("wheels", *MODEL_MODULES), doc="open_clip, ftfy, wcwidth, PyAV from the carried wheels"),
        Step("build", 130, _self("build"), _self("build", "--dry"), doc="stzsar._C for sm_90 only (cached by its sources)"),
        # The compile is the risk: first, so that it gets the time the build leaves when cached.
        # Its figures reach the runner after each part (a step stopped at its cap keeps them).
        Step("train-step", 160,
             (PY, "-m", "benchmarks.throughput", "--train-step", "--preset", "gpu-b16", "--batch", "8", "--prompts", "64",
              "--iters", "10", "--warmup", "3", "--max-batch", "256", "--search-budget-s", "30",
              "--cache-dir", f"{WORK}/inductor-train", "--out", WORK),
             (PY, "-m", "benchmarks.throughput", "--train-step", "--preset", "tiny", "--device", "cpu", "--batch", "2",
              "--frames", "4", "--prompts", "4", "--iters", "2", "--warmup", "1", "--max-batch", "4",
              "--compile-backend", "aot_eager", "--cache-dir", f"{WORK}/inductor-train", "--out", WORK),
             dry_cap_s=150,
             doc="ViT-B/16, 8 x 16 x 224 against 64 prompts, bf16, lower 6 blocks frozen: eager vs compiled step, "
                 "compile time, break-even, peak memory, STI head share, FLOP utilisation; eager batches up to 256"),
        Step("eval-forward", 45,
             (PY, "-m", "benchmarks.throughput", "--eval-forward", "--preset", "gpu-b16", "--batch", "16",
              "--classes", "400", "--views", "1x1,4x3", "--iters", "5", "--warmup", "2", "--out", WORK),
             (PY, "-m", "benchmarks.throughput", "--eval-forward", "--preset", "tiny", "--device", "cpu", "--batch", "2",
              "--frames", "4", "--classes", "20", "--views", "1x1,4x3", "--iters", "2", "--warmup", "1", "--out", WORK),
             dry_cap_s=60,
             doc="stzsar eval's batch forward, 16 videos x 16 x 224, C=400, bf16: 1x1 and 4x3 views, videos/s, peak memory"),
        # Eager: decoding bounds the rate, and a second compile would cost the stage a minute.
        Step("end-to-end", 90,
             (PY, "-m", "benchmarks.eval_throughput", "--model", "ViT-B-16", "--num-frames", "16", "--classes", "400",
              "--videos", "512", "--distinct-videos", "32", "--frames-per-video", "250", "--width", "340", "--height", "256",
              "--batch-size", "16", "--passes", "3", "--repeats", "3", "--compile", "false", "--out", WORK),
             (PY, "-m", "benchmarks.eval_throughput", "--model", "stzsar-tiny", "--device", "cpu", "--num-frames", "4",
              "--classes", "20", "--videos", "8", "--distinct-videos", "2", "--frames-per-video", "50", "--width", "340",
              "--height", "256", "--batch-size", "4", "--workers", "2", "--passes", "2", "--repeats", "2",
              "--compile", "false", "--out", WORK),
             dry_cap_s=85,
             doc="10 s 340x256 H.264 clips (32 written, listed 16 times) decoded by PyAV on every core: decode, model "
                 "and end-to-end videos/s, decoding workers that would feed the model"),
    ],
}

# The backends each stage's pytest steps must parametrise (else collection fails).
REQUIRED_BACKENDS = {False: "cuda,triton", True: "cpu,triton"}


def caps_total(stage: str, dry: bool = False) -> int:
    return sum(step_cap(step, dry) for step in STAGES[stage])


def step_cap(step: Step, dry: bool) -> int:
    return step.dry_cap_s if (dry and step.dry_cap_s is not None) else step.cap_s


# --------------------------------------------------------------------------------------------
# Running a stage
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    status: str = "pending"  # ok | failed | timeout | no-time
    seconds: float = 0.0
    cap_s: int = 0
    limit_s: float = 0.0
    rc: Optional[int] = None
    command: str = ""
    reason: str = ""
    figures: Dict[str, Any] = field(default_factory=dict)
    log_tail: List[str] = field(default_factory=list)


class Runner:
    def __init__(self, stage: str, dry: bool, out: Path, budget_s: int, only: Optional[Sequence[str]] = None,
                 steps: Optional[Sequence[Step]] = None):
        self.stage, self.dry, self.out, self.budget_s = stage, dry, out, budget_s
        self.steps = list(steps if steps is not None else STAGES[stage])
        if only:
            unknown = sorted(set(only) - {s.name for s in self.steps})
            if unknown:
                raise SystemExit(f"unknown step(s) {unknown} in stage {stage!r}; steps: {[s.name for s in self.steps]}")
            self.steps = [s for s in self.steps if s.name in only]
        self.cache = CACHE / ("dry" if dry else "gpu")
        self.work = self.cache / "work" / stage
        self.site = CACHE / "site"
        self.results: List[Result] = []
        self.last_output: List[str] = []
        self.started = time.monotonic()
        self.log_path = out / f"gpu_check-{stage}.log"
        self.json_path = out / f"gpu_check-{stage}.json"
        self.tree = tree_state()

    # -- environment of every step --------------------------------------------------------------
    def env(self, step: Step) -> Dict[str, str]:
        env = dict(os.environ)
        paths = [str(ROOT)] + ([str(self.site)] if self.site.is_dir() else [])
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        env["GPU_CHECK_DRY"] = "1" if self.dry else "0"
        env["TRITON_CACHE_DIR"] = str(self.cache / "triton")
        env["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache / "inductor")
        env["TRITON_CACHE_AUTOTUNING"] = "1"  # autotune results on disk: a warm rerun skips the search
        if self.tree.get("commit") and not env.get("STZSAR_GIT_COMMIT"):
            env["STZSAR_GIT_COMMIT"] = self.tree["commit"]  # read by benchmarks.common.git_info
        if self.dry:
            env["TRITON_INTERPRET"] = "1"
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.update(step.env)
        return env

    def argv(self, step: Step) -> List[str]:
        command = step.dry if (self.dry and step.dry is not None) else step.command
        argv = [part.replace(PY, sys.executable).replace(WORK, str(self.work)) for part in command]
        if step.kind == "pytest":
            argv += ["-q", "-rs", "-p", "no:cacheprovider", f"--maxfail={MAXFAIL}", "--fail-on-skip",
                     f"--require-backends={REQUIRED_BACKENDS[self.dry]}", f"--junitxml={self.work / step.name}.xml"]
            workers = min(xdist_workers(self.dry), step.workers or 8)
            if workers:
                argv += ["-n", str(workers), "--dist", "loadgroup"]
        return argv

    # -- one step -------------------------------------------------------------------------------
    def run_step(self, step: Step, reserve_s: float, log) -> Result:
        result = Result(step.name, cap_s=step_cap(step, self.dry))
        argv = self.argv(step)
        result.command = " ".join(argv)
        left = self.budget_s - (time.monotonic() - self.started) - reserve_s
        result.limit_s = round(left, 1)
        if left < min(10, result.cap_s) / 2:  # half: the runner's own overhead must not starve a step
            result.status, result.reason = "no-time", f"{left:.0f} s left of the {self.budget_s} s budget after the later steps' caps"
            return result
        figures_path = self.work / f"{step.name}.figures.json"
        for stale in (figures_path, self.work / f"{step.name}.json", self.work / f"{step.name}.xml"):
            stale.unlink(missing_ok=True)
        env = self.env(step)
        env["GPU_CHECK_STEP_JSON"] = str(figures_path)
        header = f"=== {self.stage}/{step.name} (cap {result.cap_s} s, limit {left:.0f} s): {result.command}"
        _emit(header, log)
        tail: deque = deque(maxlen=LOG_TAIL_LINES)
        scan: deque = deque(maxlen=400)  # where a crash report is looked for (not kept in the JSON)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)

        def pump():
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                scan.append(line)
                _emit(line, log)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            result.rc = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            result.rc = proc.returncode
            result.status = "timeout"
            result.reason = f"stopped after {left:.0f} s"
        reader.join(timeout=10)
        result.seconds = round(time.monotonic() - t0, 1)
        result.log_tail = list(tail)
        self.last_output = list(scan)
        if figures_path.exists():
            try:
                result.figures.update(json.loads(figures_path.read_text()))
            except ValueError as error:
                result.figures["figures_error"] = str(error)
        if step.kind == "pytest":
            self._read_junit(step, result)
        elif step.kind == "bench":
            self._read_bench(step, result)
        if result.status == "pending":
            if result.rc != 0:
                result.status = "failed"
                result.reason = result.reason or _exit_reason(result.rc, tail)
            else:
                result.status = "ok"
        _emit(f"=== {self.stage}/{step.name}: {result.status} in {result.seconds:.1f} s"
              + (f" ({result.reason})" if result.reason else ""), log)
        return result

    def _read_junit(self, step: Step, result: Result) -> None:
        path = self.work / f"{step.name}.xml"
        if not path.exists():
            result.figures["junit"] = "no report (pytest did not finish)"
            if result.status == "pending":
                result.status, result.reason = "failed", _exit_reason(result.rc, result.log_tail)
            return
        counts = junit_counts(path)
        result.figures.update(counts)
        problems = []
        if counts["tests"] == 0:
            problems.append("no test case ran")
        if counts["skipped"]:
            problems.append(f"{counts['skipped']} skipped")
        if counts["failures"] or counts["errors"]:
            problems.append(f"{counts['failures']} failed, {counts['errors']} errors")
        if problems and result.status == "pending":
            result.status, result.reason = "failed", "; ".join(problems)

    def _read_bench(self, step: Step, result: Result) -> None:
        path = self.work / f"{step.name}.json"
        if not path.exists():
            result.figures["bench"] = "no JSON written"
            if result.status == "pending" and result.rc == 0:
                result.status, result.reason = "failed", f"{path.name} was not written"
            return
        result.figures.update(bench_figures(json.loads(path.read_text())))

    # -- a crash's native stack -----------------------------------------------------------------
    def segv_trace(self, crashed: Result, reserve_s: float, log) -> Optional[Result]:
        """After a test process crashed (SIGSEGV, or a pytest-xdist worker that died): rerun the
        test that crashed under gdb (cuda-gdb on the GPU machine, which has no gdb) for its native
        stack, in the time the stage has left over (never the later steps' caps)."""
        selection = _crashed_test(self.last_output)
        debugger = shutil.which("gdb") or shutil.which("cuda-gdb")
        if not selection or not debugger:
            crashed.figures["segv_trace"] = f"not taken: test {selection or 'unknown'}, debugger {debugger or 'none'}"
            return None
        step = Step(f"{crashed.name}-segv-trace", 45,
                    (debugger, "-batch", "-ex", "run", "-ex", "bt", "--args", PY, "-m", "pytest", *selection,
                     "-q", "-p", "no:cacheprovider"), env=_NO_AUTOTUNE, doc="native stack of the crash")
        return self.run_step(step, reserve_s, log)

    # -- the stage ------------------------------------------------------------------------------
    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w") as log:
            mode = "dry run on the CPU (Triton interpreter, tiny shapes)" if self.dry else "GPU"
            _emit(f"gpu_check {self.stage}: {mode}; budget {self.budget_s} s, caps {sum(step_cap(s, self.dry) for s in self.steps)} s; "
                  f"commit {self.tree.get('commit')} (dirty: {self.tree.get('dirty')})", log)
            for i, step in enumerate(self.steps):
                reserve = sum(step_cap(s, self.dry) for s in self.steps[i + 1:])
                result = self.run_step(step, reserve, log)
                self.results.append(result)
                crashed = result.rc in (-signal.SIGSEGV, 128 + signal.SIGSEGV) or any(
                    "crashed while running" in line for line in self.last_output)
                if step.kind == "pytest" and crashed:
                    trace = self.segv_trace(result, reserve, log)
                    if trace is not None:
                        trace.status = "info" if trace.status in ("ok", "failed") else trace.status
                        self.results.append(trace)
                self.write_json()
        failed = [r for r in self.results if r.status not in ("ok", "info")]
        self.write_json()
        print()
        print(self.summary())
        return 1 if failed else 0

    def payload(self) -> Dict[str, Any]:
        env = next((r.figures for r in self.results if r.name == "env"), {})
        failed = [r.name for r in self.results if r.status not in ("ok", "info")]
        return {
            "stage": self.stage,
            "dry_run": self.dry,
            "ok": bool(self.results) and not failed and len(self.results) >= len(self.steps),
            "failed_steps": failed,
            "commit": self.tree.get("commit"),
            "dirty": self.tree.get("dirty"),
            "tree_source": self.tree.get("source"),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.started, 1),
            "budget_s": self.budget_s,
            "caps_s": sum(step_cap(s, self.dry) for s in self.steps),
            "gpu": env.get("gpu"),
            "versions": env.get("versions"),
            "nvdec": env.get("nvdec"),
            "environment": {k: os.environ.get(k) for k in ("STZSAR_DISABLE_BACKENDS", "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST")
                            if os.environ.get(k) is not None},
            "steps": [vars(r) for r in self.results],
        }

    def write_json(self) -> None:
        self.json_path.write_text(json.dumps(self.payload(), indent=2, default=str) + "\n")

    def summary(self) -> str:
        from benchmarks.common import format_table

        rows = []
        for r in self.results:
            rows.append([r.name, r.status, f"{r.seconds:.1f}", str(r.cap_s), _short_figures(r)])
        payload = self.payload()
        gpu = payload.get("gpu") or {}
        title = (f"gpu_check {self.stage}{' (dry run)' if self.dry else ''} on {gpu.get('name', 'no GPU')}: "
                 f"{'OK' if payload['ok'] else 'FAILED'} in {payload['seconds']:.0f} s of {self.budget_s} s")
        notes = [f"JSON: {self.json_path}", f"log: {self.log_path}"]
        return format_table(["step", "status", "seconds", "cap", "figures"], rows, title=title, notes=notes, align="llrrl")


def _emit(line: str, log) -> None:
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def _kill_group(proc: subprocess.Popen) -> None:
    """End the step's process group (pytest and its workers, nvcc and its children): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _exit_reason(rc: Optional[int], tail: Sequence[str]) -> str:
    if rc is not None and rc < 0:
        return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
    last = next((line.strip() for line in reversed(list(tail)) if line.strip()), "")
    return f"exit {rc}" + (f": {last[:300]}" if last else "")


def _crashed_test(lines: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """The pytest selection of the test that crashed: the node id pytest-xdist names for a worker
    that died, else the innermost test frame of faulthandler's stack (file, ``-k`` function)."""
    found = None
    for line in lines:
        worker = re.search(r"crashed while running '([^']+)'", line)
        if worker:
            return (worker.group(1),)
        frame = re.search(r'File "[^"]*tests/(test_\w+\.py)", line \d+ in (test_\w+)', line)
        if frame:
            found = (f"tests/{frame.group(1)}", "-k", frame.group(2))
    return found


def _short_figures(r: Result) -> str:
    f = r.figures
    if "tests" in f:
        text = f"{f['tests']} tests, {f['failures']} failed, {f['errors']} errors, {f['skipped']} skipped"
    elif "rows" in f:
        best = f.get("best") or {}
        text = "; ".join(f"{mode}: {v}" for mode, v in best.items()) or f"{len(f['rows'])} rows"
    elif r.name == "env":
        gpu = f.get("gpu") or {}
        text = f"{gpu.get('name', 'no GPU')}, torch {((f.get('versions') or {}).get('torch'))}, nvdec {((f.get('nvdec') or {}).get('dlopen'))}"
    elif "summary" in f:
        text = str(f["summary"])
    else:
        text = ""
    if r.reason:
        text = (text + "; " if text else "") + r.reason
    return text[:150]


def junit_counts(path: Path) -> Dict[str, int]:
    """Totals of a pytest JUnit report (all suites)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


FUSED_BACKENDS = ("cpu", "cuda", "triton")


def bench_figures(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The figures of a benchmarks.kernels JSON that the stage's record keeps: each row's time,
    speed-up over naive, fraction of the matmul rate and peak memory; the targets and checks."""
    rows = []
    for row in data.get("rows", []):
        rows.append({
            "op": row.get("op"), "backend": row.get("backend"), "mode": row.get("mode"),
            "ms": None if row.get("time_s") is None else round(row["time_s"] * 1e3, 4),
            "vs_naive": _round(row.get("vs_naive"), 3), "frac_matmul": _round(row.get("frac_matmul"), 4),
            "peak_mb": None if row.get("peak_bytes") is None else round(row["peak_bytes"] / 2**20, 1),
            "check": row.get("check"), "note": row.get("note"), "peer": bool(row.get("peer")),
        })
    best: Dict[str, str] = {}  # the fastest of our fused backends, then the fastest peer
    for mode in ("fwd", "fwd+bwd"):
        for label, group in (("", FUSED_BACKENDS), ("peer ", None)):
            timed = [r for r in rows if r["mode"] == mode and r["ms"]
                     and (r["backend"] in group if group else r["peer"])]
            if timed:
                top = min(timed, key=lambda r: r["ms"])
                best[label + mode] = f"{top['backend']} {top['ms']:.3g} ms" + (
                    f" ({top['vs_naive']:.2f}x naive)" if top["vs_naive"] else "")
    return {
        "config": data.get("config"),
        "matmul": data.get("matmul"),
        "rows": rows,
        "best": best,
        "targets": data.get("targets"),
        "checks": data.get("checks"),
    }


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def xdist_workers(dry: bool) -> int:
    """pytest-xdist workers for the GPU's pytest steps: the cold Triton compiles (one per shape
    and dtype) then run side by side. None in the dry run (two cores, one interpreter)."""
    if dry:
        return 0
    try:
        import importlib.util

        if importlib.util.find_spec("xdist") is None:
            return 0
    except (ImportError, ValueError):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def tree_state() -> Dict[str, Any]:
    """The commit and dirty flag: from git; on a copy without .git from ``STZSAR_GIT_COMMIT`` /
    ``GPU_CHECK_DIRTY``, else from the state benchmarks/fetch_gpu_wheels.sh stored beside the
    wheels. The hash of the tree's tracked-looking sources is recorded in every case."""
    from benchmarks.common import git_info

    info = git_info()
    state: Dict[str, Any] = {"commit": None, "dirty": None, "source": None, "sources_sha256": sources_hash()}
    if info.get("commit") not in (None, "unknown") and info.get("source") is None:
        state.update(commit=info["commit"], dirty=info["dirty"], source="git")
    elif os.environ.get("STZSAR_GIT_COMMIT"):
        dirty = os.environ.get("GPU_CHECK_DIRTY")
        state.update(commit=os.environ["STZSAR_GIT_COMMIT"], dirty=None if dirty is None else dirty == "1", source="STZSAR_GIT_COMMIT")
    elif TREE_STATE.exists():
        try:
            saved = json.loads(TREE_STATE.read_text())
            state.update(commit=saved.get("commit"), dirty=saved.get("dirty"), source=f"{TREE_STATE.relative_to(ROOT)} ({saved.get('written')})")
        except ValueError:
            pass
    return state


def sources_hash(folders: Sequence[str] = ("stzsar", "csrc", "benchmarks", "tests")) -> str:
    """sha256 over the source files (path and content) of the folders the checks run."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".cpp", ".cu", ".cuh", ".h", ".json", ".yaml", ".csv") \
                    and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Probes: each runs as its own step process and writes figures to $GPU_CHECK_STEP_JSON
# --------------------------------------------------------------------------------------------


def _write_figures(figures: Mapping[str, Any]) -> None:
    path = os.environ.get("GPU_CHECK_STEP_JSON")
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, default=str))


def _run(argv: Sequence[str], timeout: float = 30) -> Tuple[int, str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as error:
        return 127, f"{type(error).__name__}: {error}"
    return done.returncode, (done.stdout + done.stderr).strip()


def find_cuda_home() -> Optional[str]:
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.access(os.path.join(candidate, "bin", "nvcc"), os.X_OK):
            return candidate
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def probe_nvdec() -> Dict[str, Any]:
    """Whether the driver offers NVDEC, which DALI's and any GPU video decoder need."""
    import ctypes

    rc, text = _run(["sh", "-c", "ldconfig -p | grep -i libnvcuvid"])
    result: Dict[str, Any] = {"ldconfig": text if rc == 0 else f"(none listed; exit {rc}) {text}".strip()}
    try:
        ctypes.CDLL("libnvcuvid.so.1")
        result["dlopen"] = "ok"
    except OSError as error:
        result["dlopen"] = f"failed: {error}"
    result["available"] = result["dlopen"] == "ok"
    return result


def probe_env(dry: bool) -> int:
    import platform

    import torch

    versions: Dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception as error:  # recorded; the backend step fails loudly if Triton is needed
        versions["triton"] = f"not importable: {error}"
    cuda_home = find_cuda_home()
    versions["cuda_home"] = cuda_home
    if cuda_home:
        rc, text = _run([os.path.join(cuda_home, "bin", "nvcc"), "--version"])
        versions["nvcc"] = next((line for line in text.splitlines() if "release" in line), text[-200:])
    rc, text = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    versions["nvidia_smi"] = text if rc == 0 else f"not available (exit {rc})"
    versions["platform"] = platform.platform()
    versions["cpu_count"] = os.cpu_count()
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "sm": f"sm_{props.major}{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
               "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
    nvdec = probe_nvdec()
    _write_figures({"gpu": gpu, "versions": versions, "nvdec": nvdec})
    print(json.dumps({"gpu": gpu, "versions": versions, "nvdec": nvdec}, indent=2))
    if not dry and gpu is None:
        print("no CUDA device visible to torch: the stage needs one (GPU_CHECK_DRY=1 runs it on the CPU)")
        return 1
    return 0


def _missing(modules: Sequence[str], site: Optional[Path]) -> List[str]:
    """Modules that a fresh interpreter (with ``site`` on its path) cannot find."""
    code = "import importlib.util, sys; print(','.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, env=env, timeout=60)
    return [m for m in done.stdout.strip().split(",") if m]


def probe_wheels(modules: Sequence[str], dry: bool, wheel_dir: Path = WHEELS, site: Path = CACHE / "site") -> int:
    """Install the carried wheels (``.whl/``) into ``.gpu_cache/site`` when a module the stage
    needs does not import; fail naming what is still missing. The dry run only reports."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    figures: Dict[str, Any] = {"modules": list(modules), "wheels": [w.name for w in wheels]}
    missing = _missing(modules, site if site.is_dir() else None)
    figures["missing_before"] = missing
    if missing and not dry and wheels:
        stamp = site / ".installed"
        wanted = "\n".join(w.name for w in wheels)
        if not (stamp.exists() and stamp.read_text() == wanted):
            shutil.rmtree(site, ignore_errors=True)
            argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)]
            print("+", " ".join(argv), flush=True)
            done = subprocess.run(argv)
            if done.returncode != 0:
                figures["summary"] = f"pip install of {len(wheels)} wheels failed (exit {done.returncode})"
                _write_figures(figures)
                return 1
            stamp.write_text(wanted)
        figures["installed_into"] = str(site)
        missing = _missing(modules, site)
    figures["missing"] = missing
    if missing and dry:
        figures["summary"] = f"dry run: not importable here {missing} (the GPU run installs them from .whl/)"
        _write_figures(figures)
        print(figures["summary"])
        return 0
    figures["summary"] = f"missing {missing}" if missing else f"all of {list(modules)} import"
    _write_figures(figures)
    print(figures["summary"])
    if missing:
        print(f"not importable: {missing}. Fetch the wheels on a machine with network "
              "(bash benchmarks/fetch_gpu_wheels.sh) and name .whl in the device call's carry list.")
        return 1
    return 0


def _extension_key(cuda_home: Optional[str], arch: str) -> str:
    import torch

    digest = hashlib.sha256()
    for path in sorted(glob.glob(str(ROOT / "csrc" / "**" / "*"), recursive=True)) + [str(ROOT / "setup.py")]:
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, ROOT).encode())
            digest.update(Path(path).read_bytes())
    nvcc = _run([os.path.join(cuda_home, "bin", "nvcc"), "--version"])[1] if cuda_home else "cpu"
    digest.update(f"{torch.__version__}|{sys.version}|{arch}|{nvcc}".encode())
    return digest.hexdigest()[:20]


def _verify_extension(so_path: Optional[Path], want_cuda: bool) -> Tuple[bool, str]:
    """Import the extension in a fresh interpreter (from ``so_path`` when given, else the
    package's) and check it carries the CUDA kernels when they are wanted."""
    code = (
        "import sys, importlib.util, torch, stzsar\n"
        "path = sys.argv[1]\n"
        "if path:\n"
        "    spec = importlib.util.spec_from_file_location('stzsar._C', path)\n"
        "    ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)\n"
        "else:\n"
        "    import stzsar._C as ext\n"
        "print(ext.__file__, 'with_cuda', ext.with_cuda())\n"
        "sys.exit(0 if ext.with_cuda() or sys.argv[2] == '0' else 3)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code, str(so_path or ""), "1" if want_cuda else "0"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    text = (done.stdout + done.stderr).strip()
    if done.returncode == 3:
        text += "\nstzsar._C was built without its CUDA kernels"
    return done.returncode == 0, text


def probe_build(dry: bool) -> int:
    """Build stzsar._C (GPU: CUDA kernels for sm_90 only, in place; dry: the install's build, or
    with GPU_CHECK_DRY_BUILD=1 a CPU build outside the package). A build failure fails the step."""
    figures: Dict[str, Any] = {}
    if dry and os.environ.get("GPU_CHECK_DRY_BUILD", "0") != "1":
        ok, text = _verify_extension(None, want_cuda=False)
        print(text)
        figures.update(compiled=False, summary="dry run: the extension the install built imports" if ok else "stzsar._C does not import",
                       verify=text[-500:])
        _write_figures(figures)
        if not ok:
            print("the dry run uses the extension the install built: `pip install --no-build-isolation -e .` "
                  "(or GPU_CHECK_DRY_BUILD=1 to compile one here)")
        return 0 if ok else 1

    cuda_home = None if dry else find_cuda_home()
    if not dry and cuda_home is None:
        print("nvcc not found (CUDA_HOME, /usr/local/cuda, PATH): the CUDA kernels cannot be built")
        _write_figures({"summary": "no nvcc"})
        return 1
    arch = "9.0"
    env = dict(os.environ, STZSAR_REQUIRE_EXTENSION="1", MAX_JOBS=str(os.cpu_count() or 2))
    if dry:
        env["STZSAR_CUDA"] = "0"
        lib = CACHE / "dry" / "ext-lib"
        args = ["--build-lib", str(lib), "--build-temp", str(CACHE / "dry" / "ext-build")]
    else:
        env.update(STZSAR_CUDA="1", CUDA_HOME=cuda_home, TORCH_CUDA_ARCH_LIST=arch)
        args = ["--inplace", "--build-temp", str(CACHE / "gpu" / "ext-build")]
    key = _extension_key(cuda_home, "cpu" if dry else arch)
    cached_dir = CACHE / ("dry" if dry else "gpu") / "ext" / key
    cached = sorted(cached_dir.glob("_C*.so"))
    figures.update(key=key, cuda_home=cuda_home, arch=None if dry else f"sm_{arch.replace('.', '')}")
    t0 = time.monotonic()
    if cached:
        target = (lib / "stzsar") if dry else (ROOT / "stzsar")
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("_C*.so"):
            old.unlink()
        product = target / cached[0].name
        shutil.copy2(cached[0], product)
        figures.update(compiled=False, cache="hit")
        print(f"stzsar._C from the cache {cached_dir.relative_to(ROOT)} (same sources, torch, nvcc)")
    else:
        if not dry:  # no stale build of other sources may stand in for a failed one
            for old in (ROOT / "stzsar").glob("_C*.so"):
                old.unlink()
        argv = [sys.executable, "setup.py", "-q", "build_ext", *args]
        print("+", " ".join(argv), flush=True)
        done = subprocess.run(argv, cwd=ROOT, env=env)
        figures.update(compiled=True, cache="miss", build_rc=done.returncode)
        if done.returncode != 0:
            figures["summary"] = f"build failed (exit {done.returncode})"
            _write_figures(figures)
            return 1
        built = sorted(((lib / "stzsar") if dry else (ROOT / "stzsar")).glob("_C*.so"), key=os.path.getmtime)
        if not built:
            figures["summary"] = "build reported success but no stzsar/_C*.so exists"
            _write_figures(figures)
            print(figures["summary"])
            return 1
        product = built[-1]
        cached_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(product, cached_dir / product.name)
    figures["build_s"] = round(time.monotonic() - t0, 1)
    ok, text = _verify_extension(product if dry else None, want_cuda=not dry)
    print(text)
    figures.update(verify=text[-500:], summary=("built" if figures["compiled"] else "cached") + (", imports" if ok else ", does NOT import"))
    _write_figures(figures)
    return 0 if ok else 1


def probe_backends(device: str, required: Sequence[str]) -> int:
    """Every op's backends on ``device`` (the probe's reason where one cannot run), then
    ``require_backends`` for ``required``: a missing one fails the step with its reason."""
    import warnings

    import torch  # noqa: F401

    from stzsar.ops import dispatch

    table: Dict[str, Dict[str, Optional[str]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for op in dispatch.OPS:
            table[op] = {backend: dispatch.probe(backend, device, op) for backend in ("torch", "cpu", "cuda", "triton")}
    for op, row in table.items():
        print(f"{op:<28} " + "  ".join(f"{b}: {'ok' if why is None else 'NO (' + why + ')'}" for b, why in row.items()))
    figures: Dict[str, Any] = {"device": device, "required": list(required), "probes": table,
                               "disabled": os.environ.get("STZSAR_DISABLE_BACKENDS")}
    try:
        dispatch.require_backends(device, tuple(required))
    except RuntimeError as error:
        figures["summary"] = f"missing: {error}"
        _write_figures(figures)
        print(f"require_backends({device!r}, {tuple(required)}) failed: {error}")
        return 1
    figures["summary"] = f"{','.join(required)} available for {len(table)} ops on {device}"
    _write_figures(figures)
    print(figures["summary"])
    return 0


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def list_stages() -> str:
    from benchmarks.common import format_table

    parts = []
    for stage, steps in STAGES.items():
        rows = [[s.name, str(s.cap_s), s.kind, s.doc] for s in steps]
        parts.append(format_table(["step", "cap s", "kind", "what"], rows, title=f"stage {stage}: caps {caps_total(stage)} s of {DEFAULT_BUDGET_S} s"))
    return "\n\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", nargs="?", choices=sorted(STAGES))
    parser.add_argument("--dry", action="store_true", help="the CPU dry run (also GPU_CHECK_DRY=1)")
    parser.add_argument("--only", default=None, help="comma list of steps to run (a rerun of some steps)")
    parser.add_argument("--budget", type=int, default=None, help=f"seconds for the stage (GPU_CHECK_BUDGET_S, default {DEFAULT_BUDGET_S})")
    parser.add_argument("--out", default=None, help="folder for the JSON and the log ($OUT, default gpu_out/)")
    parser.add_argument("--list", action="store_true", help="print the stages, their steps and caps")
    parser.add_argument("--probe", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dry = args.dry or os.environ.get("GPU_CHECK_DRY", "0") == "1"

    if args.probe:
        kind, rest = args.probe[0], args.probe[1:]
        if kind == "env":
            return probe_env(dry)
        if kind == "wheels":
            return probe_wheels(rest, dry)
        if kind == "build":
            return probe_build(dry or "--dry" in rest)
        if kind == "backends":
            return probe_backends(rest[0], [b for b in rest[1].split(",") if b])
        raise SystemExit(f"unknown probe {kind!r}")
    if args.list:
        print(list_stages())
        return 0
    if not args.stage:
        parser.error(f"name a stage: {', '.join(STAGES)} (or --list)")
    budget = args.budget or int(os.environ.get("GPU_CHECK_BUDGET_S", DRY_BUDGET_S if dry else DEFAULT_BUDGET_S))
    out = Path(args.out or os.environ.get("OUT") or (ROOT / "gpu_out")).resolve()
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    return Runner(args.stage, dry, out, budget, only).run()


if __name__ == "__main__":
    sys.exit(main())
