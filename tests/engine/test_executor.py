from __future__ import annotations

import threading
import time
from typing import Any

from engine.events import Executed, ExecutionError, ListSink, Progress
from engine.executor import Executor
from engine.folders import Folders
from tests.support.stub_nodes import StubWorld, chain


def run(executor: Executor, prompt: dict[str, Any], pid: str = "p", **kw: Any) -> tuple[Any, ListSink]:
    sink = ListSink()
    return executor.execute(prompt, pid, sink, **kw), sink


def test_chain_runs_in_order_and_shows_output(executor: Executor, world: StubWorld) -> None:
    outcome, sink = run(executor, chain(3, start=10))
    assert outcome.status_str == "success" and outcome.completed
    assert outcome.executed == ["1", "2", "3", "4", "5"]
    assert outcome.outputs == {"5": {"text": ["13"]}}
    assert sink.types() == ["execution_start", "execution_cached"] + ["executing"] * 5 + [
        "executed", "execution_success"]
    assert [m[0] for m in outcome.messages] == ["execution_start", "execution_cached", "execution_success"]


def test_identical_resubmission_runs_nothing(executor: Executor, world: StubWorld) -> None:
    run(executor, chain(3))
    world.calls.clear()
    outcome, sink = run(executor, chain(3), pid="q")
    assert sum(world.calls.values()) == 0
    assert outcome.executed == []
    assert sorted(outcome.cached) == ["1", "2", "3", "4", "5"]
    assert outcome.outputs == {"5": {"text": ["3"]}}
    executed = [e for e in sink.events if isinstance(e, Executed)]
    assert [e.node for e in executed] == ["5"]  # cached output replayed to the client


def test_changing_one_widget_reruns_only_downstream(executor: Executor, world: StubWorld) -> None:
    run(executor, chain(6))
    world.calls.clear()
    prompt = chain(6)
    prompt["6"]["inputs"]["b"] = 5
    outcome, _ = run(executor, prompt, pid="q")
    assert outcome.executed == ["6", "7", "8"]
    assert outcome.outputs["8"] == {"text": ["10"]}


def test_cache_keys_ignore_node_ids(executor: Executor, world: StubWorld) -> None:
    run(executor, chain(3))
    renamed = {f"n{k}": {"class_type": v["class_type"],
                         "inputs": {name: ([f"n{val[0]}", val[1]] if isinstance(val, list) else val)
                                    for name, val in v["inputs"].items()}}
               for k, v in chain(3).items()}
    world.calls.clear()
    outcome, _ = run(executor, renamed, pid="q")
    assert outcome.executed == [] and outcome.outputs == {"n5": {"text": ["3"]}}


def test_identical_nodes_in_one_prompt_run_once(executor: Executor, world: StubWorld) -> None:
    prompt = {
        "1": {"class_type": "StubInt", "inputs": {"value": 2}},
        "2": {"class_type": "StubInt", "inputs": {"value": 2}},
        "3": {"class_type": "StubAdd", "inputs": {"a": ["1", 0], "b": 1}},
        "4": {"class_type": "StubAdd", "inputs": {"a": ["2", 0], "b": 1}},
        "5": {"class_type": "StubShow", "inputs": {"value": ["3", 0]}},
        "6": {"class_type": "StubShow", "inputs": {"value": ["4", 0]}},
    }
    outcome, _ = run(executor, prompt)
    assert world.calls == {"StubInt": 1, "StubAdd": 1, "StubShow": 1}
    assert outcome.outputs == {"5": {"text": ["3"]}, "6": {"text": ["3"]}}


def test_only_what_outputs_need_runs(executor: Executor, world: StubWorld) -> None:
    prompt = chain(2)
    prompt["50"] = {"class_type": "StubInt", "inputs": {"value": 9}}  # dangling, not needed
    outcome, _ = run(executor, prompt)
    assert "50" not in outcome.executed and world.calls["StubInt"] == 1


def test_failing_node_reports_and_cache_stays_consistent(executor: Executor, world: StubWorld) -> None:
    prompt = chain(2)
    prompt["3"] = {"class_type": "StubFail", "inputs": {"a": ["2", 0], "fail": True}}
    prompt["4"]["inputs"]["value"] = ["3", 0]
    outcome, sink = run(executor, prompt)
    assert outcome.status_str == "error" and not outcome.completed
    [error] = [e for e in sink.events if isinstance(e, ExecutionError)]
    assert (error.node_id, error.node_type) == ("3", "StubFail")
    assert error.exception_message == "stub failure on purpose"
    assert error.exception_type == "builtins.ValueError"
    assert error.executed == ["1", "2"] and any("stub failure" in line for line in error.traceback)
    assert sink.types()[-1] == "execution_error"
    # Fix the input: only the failed node and what follows run; the upstream results were cached.
    world.calls.clear()
    prompt["3"]["inputs"]["fail"] = False
    outcome, _ = run(executor, prompt, pid="q")
    assert outcome.status_str == "success" and outcome.executed == ["3", "4"]
    assert outcome.outputs == {"4": {"text": ["1"]}}


def test_validation_failure_at_run_time_is_an_error_outcome(executor: Executor) -> None:
    outcome, sink = run(executor, {"1": {"class_type": "Nope", "inputs": {}}})
    assert outcome.status_str == "error"
    assert sink.types() == ["execution_start", "execution_error"]


def test_progress_and_interrupt(executor: Executor, world: StubWorld) -> None:
    prompt = chain(1)
    prompt["2"] = {"class_type": "StubSteps", "inputs": {"a": ["1", 0], "steps": 50, "wait": True}}
    interrupt = threading.Event()
    result: dict[str, Any] = {}
    sink = ListSink()

    def target() -> None:
        result["outcome"] = executor.execute(prompt, "p", sink, interrupt=interrupt)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 5
    while not any(isinstance(e, Progress) for e in sink.events) and time.monotonic() < deadline:
        time.sleep(0.001)
    interrupt.set()
    thread.join(5)
    outcome = result["outcome"]
    assert outcome.interrupted and outcome.status_str == "error"
    progress = [e for e in sink.events if isinstance(e, Progress)]
    assert progress and progress[0].node == "2" and progress[0].max == 50
    assert len(progress) < 50
    assert sink.types()[-1] == "execution_interrupted"
    # Nothing half-done was cached: the next run runs the interrupted node again.
    world.calls.clear()
    outcome, _ = run(executor, prompt, pid="q")
    assert outcome.status_str == "success" and world.calls["StubSteps"] == 1


def test_impure_node_reruns_when_its_file_changes(executor: Executor, world: StubWorld,
                                                  folders: Folders) -> None:
    path = folders.input_dir / "a.txt"
    path.write_text("one")
    prompt = {"1": {"class_type": "StubReadFile", "inputs": {"name": "a.txt"}},
              "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}
    assert run(executor, prompt)[0].outputs == {"2": {"text": ["one"]}}
    assert run(executor, prompt, pid="q")[0].executed == []
    path.write_text("three")
    outcome, _ = run(executor, prompt, pid="r")
    assert outcome.executed == ["1", "2"] and outcome.outputs == {"2": {"text": ["three"]}}


def test_missing_file_fingerprint_is_a_node_error(executor: Executor) -> None:
    prompt = {"1": {"class_type": "StubReadFile", "inputs": {"name": "missing.txt"}},
              "2": {"class_type": "StubShow", "inputs": {"value": ["1", 0]}}}
    outcome, sink = run(executor, prompt)
    [error] = [e for e in sink.events if isinstance(e, ExecutionError)]
    assert error.node_id == "1" and "missing.txt" in error.exception_message


def test_cache_byte_budget_evicts_lru(world: StubWorld, folders: Folders) -> None:
    from engine.cache import OutputCache

    executor = Executor(world.registry, folders, OutputCache(max_bytes=10**8, max_entries=2))
    run(executor, chain(3))  # 5 results, room for the 2 most recent: nodes 4 and 5
    assert len(executor.cache) == 2
    assert run(executor, chain(3), pid="q")[0].executed == []
    prompt = chain(3)
    prompt["4"]["inputs"]["b"] = 2  # needs node 3, which was evicted, and so on up the chain
    assert run(executor, prompt, pid="r")[0].executed == ["1", "2", "3", "4", "5"]


def test_long_chain_releases_intermediate_values(executor: Executor) -> None:
    outcome, _ = run(executor, chain(300))
    assert outcome.outputs == {"302": {"text": ["300"]}}
    assert len(outcome.executed) == 302
