"""The staged GPU checks (benchmarks/gpu_check.py) proven on the CPU.

Each stage's dry run (``GPU_CHECK_DRY=1``: the ``cpu`` and ``triton`` backends, Triton's
interpreter, tiny shapes, inductor on the CPU) must pass every step and write the stage's JSON;
a stage must fail, naming the reason, when a backend it requires is missing; the runner must turn
failures, time-outs, skips and empty test selections into a failed stage while later steps keep
their time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import STAGES, Runner, Step

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA does")


def _env(**extra):
    env = dict(os.environ)
    env.pop("STZSAR_DISABLE_BACKENDS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _dry_run(stage, out, *args, **env):
    """``bash benchmarks/gpu_check.sh STAGE --dry`` with $OUT set; (exit status, output, JSON)."""
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), stage, *args],
        cwd=ROOT, env=_env(GPU_CHECK_DRY="1", OUT=str(out), PYTHON=sys.executable, **env),
        capture_output=True, text=True, timeout=900,
    )
    record = out / f"gpu_check-{stage}.json"
    return done.returncode, done.stdout + done.stderr, json.loads(record.read_text()) if record.exists() else None


def test_caps_of_every_stage_fit_its_budget():
    for stage, steps in STAGES.items():
        names = [s.name for s in steps]
        assert len(names) == len(set(names)), stage
        assert gpu_check.caps_total(stage) <= gpu_check.DEFAULT_BUDGET_S, stage
        assert gpu_check.caps_total(stage, dry=True) <= gpu_check.DRY_BUDGET_S, stage
        for step in steps:
            assert step.kind in ("cmd", "pytest", "bench"), step
            assert step.doc, f"{stage}/{step.name} says what it does"


@NO_CUDA
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dry_run_of_every_stage_passes_every_step(stage, tmp_path):
    t0 = time.monotonic()
    rc, output, record = _dry_run(stage, tmp_path)
    assert rc == 0, output[-4000:]
    assert record is not None, output[-2000:]
    assert record["stage"] == stage and record["dry_run"] is True and record["ok"] is True
    assert record["failed_steps"] == []
    assert record["commit"] and len(record["commit"]) == 40 and isinstance(record["dirty"], bool)
    assert record["versions"]["torch"] == torch.__version__
    assert {"ldconfig", "dlopen", "available"} <= set(record["nvdec"])
    assert record["gpu"] is None  # the dry run hides every GPU
    steps = record["steps"]
    assert [s["name"] for s in steps] == [s.name for s in STAGES[stage]]
    for step, spec in zip(steps, STAGES[stage]):
        assert step["status"] == "ok", step
        assert 0 < step["seconds"] <= step["limit_s"] + 15, step
        if spec.kind == "pytest":
            assert step["figures"]["tests"] > 0 and step["figures"]["skipped"] == 0, step
            assert "--fail-on-skip" in step["command"] and "--require-backends=cpu,triton" in step["command"]
            assert "--maxfail=" in step["command"] and " -x" not in step["command"]
        if spec.kind == "bench":
            rows = step["figures"]["rows"]
            backends = {r["backend"] for r in rows}
            assert "naive" in backends and "cpu" in backends, step["name"]
            if "maxsim" in step["name"]:
                assert "triton" in backends, step["name"]
            assert all(not str(r["check"] or "").startswith("FAIL") for r in rows), rows
    assert record["seconds"] <= time.monotonic() - t0
    assert (tmp_path / f"gpu_check-{stage}.log").exists()
    assert "| step" in output and "OK" in output  # the summary table


@NO_CUDA
def test_stage_fails_when_a_gpu_backend_is_unavailable(tmp_path):
    """STZSAR_DISABLE_BACKENDS=triton: the backend step and the op tests fail, naming why."""
    rc, output, record = _dry_run("kernels", tmp_path, "--only", "backends,ops", STZSAR_DISABLE_BACKENDS="triton")
    assert rc != 0
    assert record["ok"] is False and record["failed_steps"] == ["backends", "ops"]
    backends, ops = record["steps"]
    assert backends["status"] == "failed"
    assert "triton: disabled by STZSAR_DISABLE_BACKENDS" in backends["figures"]["summary"]
    assert backends["figures"]["probes"]["spatial_maxsim"]["triton"] == "disabled by STZSAR_DISABLE_BACKENDS"
    assert ops["status"] == "failed"  # --require-backends: collection fails, naming the reason
    ops_log = "\n".join(ops["log_tail"])
    assert "no case for ['triton']" in ops_log and "spatial_maxsim/triton: disabled by STZSAR_DISABLE_BACKENDS" in ops_log


def _py(code):
    return (sys.executable, "-c", code)


def test_failures_and_timeouts_fail_the_stage_and_later_steps_keep_their_time(tmp_path):
    steps = [
        Step("first", 2, _py("print('fine')"), doc="ok"),
        Step("broken", 2, _py("import sys; print('boom'); sys.exit(3)"), doc="fails"),
        Step("hangs", 2, _py("import time; print('waiting', flush=True); time.sleep(60)"), doc="times out"),
        Step("last", 3, _py("print('still ran')"), doc="ok"),
    ]
    runner = Runner("kernels", dry=True, out=tmp_path, budget_s=9, steps=steps)
    t0 = time.monotonic()
    assert runner.run() == 1
    took = time.monotonic() - t0
    status = {r.name: r for r in runner.results}
    assert status["first"].status == "ok" and status["last"].status == "ok"
    assert status["broken"].status == "failed" and status["broken"].rc == 3 and "boom" in status["broken"].reason
    assert status["hangs"].status == "timeout" and "waiting" in status["hangs"].log_tail
    # The hang may use what the earlier steps left over, never the 3 s the last step holds.
    assert status["hangs"].limit_s <= 9 - 3 and took < 9 + 2
    record = json.loads((tmp_path / "gpu_check-kernels.json").read_text())
    assert record["failed_steps"] == ["broken", "hangs"] and record["ok"] is False


def test_steps_without_time_left_fail(tmp_path):
    """A step whose later steps' caps hold the whole budget, and one whose cap exceeds what is
    left, do not run and fail the stage."""
    steps = [Step("first", 2, _py("print('no')"), doc="squeezed out by the next cap"),
             Step("greedy", 10, _py("print('no')"), doc="more than the budget")]
    runner = Runner("kernels", dry=True, out=tmp_path, budget_s=4, steps=steps)
    assert runner.run() == 1
    assert [r.status for r in runner.results] == ["no-time", "no-time"]


def test_pytest_step_with_no_case_fails(tmp_path):
    steps = [Step("empty", 60, (gpu_check.PY, "-m", "pytest", "tests/test_gpu_check.py", "-k", "no_such_test_name"),
                  kind="pytest", doc="selects nothing")]
    runner = Runner("kernels", dry=True, out=tmp_path, budget_s=60, steps=steps)
    assert runner.run() == 1
    assert runner.results[0].status == "failed"


@NO_CUDA
def test_fail_on_skip_turns_a_skip_into_a_failure():
    """tests/test_gpu_ops.py skips on a CPU outside the dry run; --fail-on-skip must fail it."""
    args = [sys.executable, "-m", "pytest", "tests/test_gpu_ops.py", "-q", "-p", "no:cacheprovider", "-rs",
            "-k", "test_sti_similarity and cpu-tiny-fp32-", "--fail-on-skip"]
    done = subprocess.run(args, cwd=ROOT, env=_env(GPU_CHECK_DRY="0"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "allows no skips" in done.stdout and "no CUDA device" in done.stdout
    assert "1 error" in done.stdout or "1 failed" in done.stdout


def _wheel(folder, module, version="0.1"):
    """A minimal pure-Python wheel holding ``module`` (pip installs it offline)."""
    import zipfile

    path = folder / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    files = {f"{module}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in list(files) + [f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def test_wheels_are_installed_when_a_module_is_missing(tmp_path, capsys):
    wheels, site = tmp_path / "whl", tmp_path / "site"
    wheels.mkdir()
    _wheel(wheels, "stzsar_gpu_check_probe")
    assert gpu_check.probe_wheels(["stzsar_gpu_check_probe"], dry=False, wheel_dir=wheels, site=site) == 0
    assert (site / "stzsar_gpu_check_probe" / "__init__.py").exists()
    # A module no carried wheel provides fails the step and says how to fetch it.
    assert gpu_check.probe_wheels(["stzsar_gpu_check_absent"], dry=False, wheel_dir=wheels, site=site) == 1
    assert "fetch_gpu_wheels.sh" in capsys.readouterr().out
    # The dry run reports what is missing and installs nothing.
    assert gpu_check.probe_wheels(["stzsar_gpu_check_absent"], dry=True, wheel_dir=wheels, site=tmp_path / "none") == 0
    assert not (tmp_path / "none").exists()


def test_wheel_script_pins_what_requirements_pin():
    script = (ROOT / "benchmarks" / "fetch_gpu_wheels.sh").read_text()
    block = script[script.index("WHEELS=(") + len("WHEELS=("):]
    listed = dict(line.strip().split("==") for line in block[:block.index(")")].split())
    assert {"flash-maxsim", "late-interaction-kernels", "open_clip_torch", "ftfy", "wcwidth", "av"} == set(listed)
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pinned[name.lower().replace("_", "-")] = version
    for name, version in listed.items():
        key = name.lower().replace("_", "-")
        if key in pinned:
            assert pinned[key] == version, f"{name}: the wheel script fetches {version}, requirements.txt pins {pinned[key]}"


def test_junit_and_benchmark_figures(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text('<testsuites><testsuite tests="7" failures="1" errors="0" skipped="2"/>'
                      '<testsuite tests="3" failures="0" errors="1" skipped="0"/></testsuites>')
    assert gpu_check.junit_counts(report) == {"tests": 10, "failures": 1, "errors": 1, "skipped": 2}
    data = {"rows": [
        {"op": "maxsim", "backend": "naive", "mode": "fwd", "time_s": 0.004},
        {"op": "maxsim", "backend": "triton", "mode": "fwd", "time_s": 0.001, "vs_naive": 4.0, "peak_bytes": 3 * 2**20},
        {"op": "maxsim", "backend": "cuda", "mode": "fwd", "time_s": 0.002, "vs_naive": 2.0},
        {"op": "maxsim", "backend": "torch", "mode": "fwd", "time_s": 0.0005},
        {"op": "maxsim", "backend": "flash-maxsim", "mode": "fwd", "time_s": 0.003, "peer": "flash"},
    ]}
    figures = gpu_check.bench_figures(data)
    assert figures["best"] == {"fwd": "triton 1 ms (4.00x naive)", "peer fwd": "flash-maxsim 3 ms"}
    assert figures["rows"][1]["peak_mb"] == 3.0 and figures["rows"][1]["ms"] == 1.0


def test_crashed_test_is_found_in_the_output():
    faulthandler = ["Fatal Python error: Segmentation fault", "", "Current thread 0x01 (most recent call first):",
                    '  File "/x/stzsar/ops/spatial_maxsim.py", line 10 in _forward_impl',
                    '  File "/x/tests/test_gpu_ops.py", line 200 in test_spatial_maxsim',
                    '  File "/x/site-packages/_pytest/python.py", line 150 in pytest_pyfunc_call']
    assert gpu_check._crashed_test(faulthandler) == ("tests/test_gpu_ops.py", "-k", "test_spatial_maxsim")
    xdist = ["[gw3] node down: Not properly terminated",
             "worker 'gw3' crashed while running 'tests/test_gpu_ops.py::test_temporal_saliency[triton-odd-fp32]'"]
    assert gpu_check._crashed_test(xdist) == ("tests/test_gpu_ops.py::test_temporal_saliency[triton-odd-fp32]",)
    assert gpu_check._crashed_test(["all good"]) is None
