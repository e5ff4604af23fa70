"""Threads of an evaluation on the CPU: decoding workers run one intra-op thread each, and the
model in the main process gets the cores the workers leave (at least one), restored afterwards."""

import os

import pytest
import torch

import stzsar.eval.engine as engine
from stzsar.eval.engine import EvalSettings, evaluate, model_cpu_threads
from tests.test_eval_protocols import FixedLogitDataset, FixedLogitModel

CLASSES = [f"class {i}" for i in range(4)]


class ThreadRecordingModel(FixedLogitModel):
    def __init__(self):
        super().__init__()
        self.threads = []

    def encode_video(self, clips):
        self.threads.append(torch.get_num_threads())
        return super().encode_video(clips)


class WorkerThreadsDataset(FixedLogitDataset):
    """Writes ``torch.get_num_threads()`` of the process that loads each item to ``folder``."""

    def __init__(self, folder, count=6):
        super().__init__(torch.randn(count, len(CLASSES)), [i % len(CLASSES) for i in range(count)])
        self.folder = str(folder)

    def __getitem__(self, index):
        with open(os.path.join(self.folder, f"{index}.txt"), "w") as handle:
            handle.write(f"{os.getpid()} {torch.get_num_threads()}")
        return super().__getitem__(index)


def test_model_threads_leave_the_workers_their_cores(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(engine, "usable_cores", lambda: 8)
    assert model_cpu_threads(cpu, 2) == 6
    assert model_cpu_threads(cpu, 8) == 1 and model_cpu_threads(cpu, 12) == 1
    assert model_cpu_threads(cpu, 0) is None  # no workers: decoding and the model take turns
    assert model_cpu_threads(cuda, 4) is None
    assert model_cpu_threads(cpu, 2, requested=3) == 3
    with pytest.raises(ValueError):
        EvalSettings(cpu_threads=-1)


def test_evaluate_sets_threads_in_workers_and_main(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "usable_cores", lambda: 3)
    before = torch.get_num_threads()
    dataset, model = WorkerThreadsDataset(tmp_path), ThreadRecordingModel()
    settings = EvalSettings(num_workers=1, batch_size=2, device="cpu", progress=False)
    result = evaluate(model, dataset, model.encode_classes(CLASSES), CLASSES, settings=settings)
    assert result.num_scored == len(dataset)
    assert model.threads and set(model.threads) == {2}  # 3 cores, 1 worker
    assert torch.get_num_threads() == before  # restored
    records = [(tmp_path / f"{i}.txt").read_text().split() for i in range(len(dataset))]
    assert {int(pid) for pid, _ in records} != {os.getpid()}  # loaded in a worker process
    assert {int(threads) for _, threads in records} == {1}


def test_explicit_cpu_threads_win(tmp_path):
    dataset, model = WorkerThreadsDataset(tmp_path, count=2), ThreadRecordingModel()
    settings = EvalSettings(num_workers=0, batch_size=2, device="cpu", progress=False, cpu_threads=1)
    evaluate(model, dataset, model.encode_classes(CLASSES), CLASSES, settings=settings)
    assert model.threads == [1]
