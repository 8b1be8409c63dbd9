"""The cluster's dispatch decision, the workers' states and what a prompt needs, as pure code (no Ray)."""

from __future__ import annotations

from engine.cluster.dispatch import Cancel, Fail, Release, Situation, Start, Wait, choose_worker, decide
from engine.cluster.needs import PromptNeeds, has_embedding, prompt_needs
from engine.cluster.state import IDLE, Dead, Running, WorkerState
from engine.registry import NodeRegistry
from nodes import register_builtin_nodes

CKPT = ("checkpoints", "a.safetensors")
LORA = ("loras", "l.safetensors")


def worker(worker_id: str, *, held: set[tuple[str, str]] = frozenset(), busy: str | None = None, runs: int = 0,
           files: dict[str, set[str]] | None = None, alive: bool = True) -> WorkerState:
    models = {k: frozenset(v) for k, v in (files or {"checkpoints": {"a.safetensors", "b.safetensors"},
                                                     "loras": {"l.safetensors"}}).items()}
    activity = IDLE if busy is None else Running(busy)
    return WorkerState(worker_id, models=models, held=frozenset(held), activity=activity if alive else Dead("gone"),
                       prompts_run=runs, node=f"host-{worker_id}")


def chosen(decision: object) -> str:
    assert isinstance(decision, Start), decision
    return decision.worker.worker_id


def test_an_idle_worker_holding_the_checkpoint_wins_over_less_loaded_ones() -> None:
    needs = PromptNeeds(frozenset({CKPT}))
    workers = [worker("w1", runs=0), worker("w2", held={CKPT}, runs=9), worker("w3", runs=1)]
    assert chosen(choose_worker(needs, workers)) == "w2"


def test_without_affinity_the_least_loaded_then_emptiest_worker_is_chosen() -> None:
    needs = PromptNeeds(frozenset({CKPT}))
    other = ("checkpoints", "b.safetensors")
    workers = [worker("w1", runs=3), worker("w2", runs=1, held={other}), worker("w3", runs=1)]
    assert chosen(choose_worker(needs, workers)) == "w3"


def test_more_of_the_prompts_files_held_breaks_a_tie_on_the_checkpoint() -> None:
    needs = PromptNeeds(frozenset({CKPT, LORA}))
    workers = [worker("w1", held={CKPT}), worker("w2", held={CKPT, LORA}, runs=5)]
    assert chosen(choose_worker(needs, workers)) == "w2"


def test_a_busy_holder_makes_the_prompt_go_to_another_idle_worker() -> None:
    needs = PromptNeeds(frozenset({CKPT}))
    assert chosen(choose_worker(needs, [worker("w1", held={CKPT}, busy="p1"), worker("w2")])) == "w2"


def test_the_prompt_waits_when_every_capable_worker_is_busy_or_none_is_alive() -> None:
    needs = PromptNeeds(frozenset({CKPT}))
    lacking = worker("w2", files={"checkpoints": set()})
    assert choose_worker(needs, [worker("w1", busy="p1"), lacking]) == Wait()
    assert choose_worker(needs, [worker("w1", alive=False)]) == Wait()


def test_no_capable_worker_gives_an_error_naming_each_worker_and_its_missing_files() -> None:
    needs = PromptNeeds(frozenset({("checkpoints", "x.safetensors"), LORA}))
    decision = choose_worker(needs, [worker("w1"), worker("w2", files={"checkpoints": {"x.safetensors"}})])
    assert isinstance(decision, Fail) and decision.kind == "WorkerLacksModel"
    assert "worker w1 on host-w1 lacks checkpoints/x.safetensors" in decision.reason
    assert "worker w2 on host-w2 lacks loras/l.safetensors" in decision.reason


def test_prompt_needs_reads_literal_file_inputs_only() -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "l.safetensors", "model": ["1", 0],
                                                     "clip": ["1", 1], "strength_model": 1.0,
                                                     "strength_clip": 1.0}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "photo.png [output]"}},
        "4": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "alpha"}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": ["9", 0]}},  # linked: unknown before running
        "6": {"class_type": "NoSuchNode", "inputs": {"ckpt_name": "ignored.safetensors"}},
        "7": {"class_type": "TrainLoraNode", "inputs": {"existing_lora": "[None]"}},  # a choice naming no file
        "8": {"class_type": "TrainLoraNode", "inputs": {"existing_lora": "older.safetensors"}},
    }
    needs = prompt_needs(prompt, registry)
    assert needs.models == {CKPT, LORA, ("loras", "older.safetensors")}
    assert needs.checkpoints == {"a.safetensors"}
    assert needs.files == {("output", "photo.png"), ("input", "mask.png")}


def test_prompt_needs_reads_embedding_names_as_the_text_encoder_does() -> None:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    prompt = {"1": {"class_type": "CLIPTextEncode", "inputs": {
        "text": "(embedding:style:1.2) a cat, embedding:bad-hands, \\(embedding:not-one\\) plain",
        "clip": ["9", 1]}}}
    # weighted, comma-ended, and an escaped parenthesis that makes the third plain text
    assert prompt_needs(prompt, registry).embeddings == {"style", "bad-hands,"}


def test_has_embedding_matches_names_with_or_without_ending_and_trailing_commas() -> None:
    files = frozenset({"style.safetensors", "sub/hands.pt", "exact"})
    assert has_embedding(files, "style") and has_embedding(files, "style,") and has_embedding(files, "exact")
    assert has_embedding(files, "sub/hands") and not has_embedding(files, "hands")
    assert not has_embedding(files, "other")


EMBEDS = {"checkpoints": {"a.safetensors"}, "embeddings": {"style.safetensors"}}
PLAIN = {"checkpoints": {"a.safetensors"}}


def test_a_prompt_with_an_embedding_waits_for_a_worker_that_has_it() -> None:
    needs = PromptNeeds(frozenset({CKPT}), embeddings=frozenset({"style"}))
    idle_without = worker("w1", files=PLAIN)
    assert chosen(choose_worker(needs, [idle_without, worker("w2", files=EMBEDS)])) == "w2"
    decision = choose_worker(needs, [idle_without, worker("w2", files=EMBEDS, busy="p")])
    assert decision == Wait()  # not the idle one: its picture would differ


def test_an_embedding_no_worker_has_does_not_block_the_prompt() -> None:
    needs = PromptNeeds(frozenset({CKPT}), embeddings=frozenset({"nowhere"}))
    assert chosen(choose_worker(needs, [worker("w1", files=PLAIN)])) == "w1"


# ---------------------------------------------------------------------------- decide: the whole decision

NEEDS = PromptNeeds(frozenset({CKPT}))


def test_a_stopping_front_releases_the_prompt_before_anything_else() -> None:
    situation = Situation(NEEDS, stopping=True, cancelled=True)
    assert decide(situation, [worker("w1")]) == Release()


def test_a_prompt_interrupted_while_it_waits_is_cancelled_even_with_an_idle_worker() -> None:
    assert decide(Situation(NEEDS, cancelled=True), [worker("w1")]) == Cancel()


def test_a_first_attempt_waits_behind_a_retried_prompt() -> None:
    assert decide(Situation(NEEDS, behind_retry=True), [worker("w1")]) == Wait()
    assert chosen(decide(Situation(NEEDS), [worker("w1")])) == "w1"


def test_missing_files_are_rechecked_once_then_fail_with_the_note_in_front() -> None:
    lacking = [worker("w1", files={"checkpoints": set()})]
    assert decide(Situation(NEEDS), lacking) == Wait(recheck_files=True)
    decision = decide(Situation(NEEDS, files_rechecked=True, note="worker w9 died; on retry: "), lacking)
    assert isinstance(decision, Fail) and decision.kind == "WorkerLacksModel"
    assert decision.reason.startswith("worker w9 died; on retry: no worker has every model file")


def test_with_no_worker_alive_or_starting_a_prompt_fails_with_why_instead_of_waiting() -> None:
    situation = Situation(NEEDS, start_error="worker w1 did not start: ModuleNotFoundError")
    assert decide(situation, []) == Fail("no worker is running: worker w1 did not start: ModuleNotFoundError",
                                         "NoWorker")
    assert decide(Situation(NEEDS), []) == Wait()  # workers are starting: wait for them
