import os
from pathlib import Path

import pytest

# Triton kernels run on CPU tensors through the interpreter when no GPU is present. The variable
# must be set before triton.jit decorates anything, so it is set here, before any test imports.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real annotation files in ../shared/data (the test is skipped when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real annotation files not found at {SHARED_DATA}")
    return SHARED_DATA


# --------------------------------------------------------------------------------------------
# Fail-loudly options of the staged device checks (benchmarks/gpu_check.py): a run that must
# test given backends fails when a skip or a missing parametrisation would let it test less.
# --------------------------------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("stzsar")
    group.addoption(
        "--fail-on-skip",
        action="store_true",
        default=os.environ.get("STZSAR_FAIL_ON_SKIP", "0") == "1",
        help="report every skipped test (and skipped module) as a failure (env STZSAR_FAIL_ON_SKIP=1)",
    )
    group.addoption(
        "--require-backends",
        default=os.environ.get("STZSAR_REQUIRE_BACKENDS", ""),
        help="comma list, e.g. cuda,triton: collection fails unless every selected test function "
        "parametrised by `backend` has a case for each (env STZSAR_REQUIRE_BACKENDS)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "inductor: torch.compile with inductor (a step of its own in the GPU check)")
    # pytest-xdist's own marker, registered here too for runs without xdist.
    config.addinivalue_line("markers", "xdist_group(name): run in the same pytest-xdist worker (--dist loadgroup)")


def _required_backends(config):
    return [b.strip() for b in config.getoption("require_backends").split(",") if b.strip()]


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: check what will actually run
def pytest_collection_modifyitems(session, config, items):
    required = _required_backends(config)
    if not required:
        return
    seen = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "backend" in params:
            seen.setdefault(item.originalname, set()).add(params["backend"])
    problems = [f"{name}: no case for {sorted(set(required) - found)}" for name, found in sorted(seen.items())
                if set(required) - found]
    if not seen:
        problems.append("no selected test is parametrised by `backend`")
    if problems:
        raise pytest.UsageError(
            f"--require-backends={','.join(required)}: " + "; ".join(problems) + _backend_reasons(required)
        )


def _backend_reasons(required):
    """Why each required backend is unavailable on this machine's device, where the dispatch can say."""
    try:
        from stzsar.ops import dispatch

        # Each backend on the device it runs on (triton: the GPU where there is one).
        device = {"cpu": "cpu", "cuda": "cuda"}
        here = "cuda" if _HAS_CUDA else "cpu"
        reasons = [f"{op}/{b}: {why}" for op in dispatch.OPS for b in required
                   if (why := dispatch.probe(b, device.get(b, here), op)) is not None]
    except Exception as error:  # the reason lookup must not hide the original problem
        return f" (stzsar.ops.dispatch did not answer: {error})"
    return (" (" + "; ".join(reasons) + ")") if reasons else ""


def _skip_as_failure(report, config, what):
    if report.skipped and config.getoption("fail_on_skip"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{what} skipped in a run that allows no skips (--fail-on-skip): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_as_failure(outcome.get_result(), item.config, "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_as_failure(outcome.get_result(), collector.config, "module")
