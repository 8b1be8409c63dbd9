"""Textual inversion end to end: embedding files in a models/embeddings folder, CLIPTextEncode, the cache.

The reference for "the embedding's vectors replace the token embeddings at its positions" is an
independent one: the same checkpoint with those vectors written into spare rows of its token embedding
table, encoding a prompt that uses those rows' token ids.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.backend.prompt_weights import TokenizedPrompt
from engine.backend.text import TextEncoder, load_text_encoder
from engine.backend.tokenizer import END_TOKEN, OPENAI_PAD_TOKEN, OPENCLIP_PAD_TOKEN, START_TOKEN, ClipTokenizer
from engine.events import ExecutionError, ListSink
from engine.executor import Executor
from engine.folders import Folders
from nodes.conditioning import CLIPTextEncode
from nodes.model_loaders import CheckpointLoaderSimple
from tests.fixtures.tiny_checkpoints import build_checkpoint
from tests.nodes.sd_workflow import checkpoint_loader, make_executor, node_context, run_prompt, text

#: Token ids whose embedding rows the reference encoder overwrites (ordinary BPE tokens, unused below).
SPARE_IDS = (1000, 1001, 1002)
TOKEN_TABLES = {
    "sd1": {"clip_l": "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"},
    "sdxl": {"clip_l": "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
             "clip_g": "conditioner.embedders.1.model.token_embedding.weight"},
}
PAD = {"clip_l": OPENAI_PAD_TOKEN, "clip_g": OPENCLIP_PAD_TOKEN}
WIDTH = {"clip_l": 64, "clip_g": 128}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for family in ("sd1", "sdxl"):
        build_checkpoint(root / "checkpoints" / f"tiny-{family}.safetensors", family)
    return root


@pytest.fixture
def executor(checkpoints: Path, tmp_path: Path) -> Executor:
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    return make_executor(tmp_path, checkpoints, tmp_path / "models")


def embeddings_dir(executor: Executor) -> Path:
    return executor.folders.model_dirs("embeddings")[0]


def vectors(rows: int, width: int, seed: int) -> torch.Tensor:
    """Random vectors that float16 holds exactly (the tiny checkpoints store their tables in float16)."""
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)).half().float()


def encode(executor: Executor, family: str, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    ctx = node_context(executor)
    _, clip, _ = CheckpointLoaderSimple().run(ctx, f"tiny-{family}.safetensors")
    [[cond, extras]] = CLIPTextEncode().run(ctx, prompt, clip)[0]
    return cond, extras["pooled_output"]


def reference(checkpoints: Path, family: str, rows: Mapping[str, torch.Tensor], words: list[str | int],
              weights: Mapping[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``words`` (text, or an index into the spare rows) with ``rows`` written into the token table."""
    state = load_file(str(checkpoints / "checkpoints" / f"tiny-{family}.safetensors"))
    for key, table in TOKEN_TABLES[family].items():
        state[table] = state[table].clone()
        state[table][list(SPARE_IDS[:len(rows[key])])] = rows[key].to(state[table].dtype)
    encoder: TextEncoder = load_text_encoder(state, family)
    tokenizer = ClipTokenizer()
    tokens: dict[str, TokenizedPrompt] = {}
    for key in TOKEN_TABLES[family]:
        ids = [START_TOKEN]
        for word in words:
            ids += [SPARE_IDS[word]] if isinstance(word, int) else tokenizer.encode(word)
        ids += [END_TOKEN] + [PAD[key]] * (76 - len(ids))
        chunk_weights = [1.0] * 77
        for position, weight in (weights or {}).items():
            chunk_weights[position] = weight
        tokens[key] = TokenizedPrompt(ids=[ids], weights=[chunk_weights])
    with torch.no_grad():
        return encoder.encode(tokens)


def test_safetensors_embedding_replaces_the_token_embeddings(executor: Executor, checkpoints: Path) -> None:
    rows = vectors(2, 64, seed=1)
    save_file({"emb_params": rows}, str(embeddings_dir(executor) / "shiny.safetensors"))
    cond, pooled = encode(executor, "sd1", "a embedding:shiny circle")
    expected, expected_pooled = reference(checkpoints, "sd1", {"clip_l": rows}, ["a", 0, 1, "circle"])
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    plain, _ = encode(executor, "sd1", "a circle")
    assert not torch.allclose(cond, plain, atol=1e-3)


def test_a1111_pt_embedding(executor: Executor, checkpoints: Path) -> None:
    rows = vectors(3, 64, seed=2)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(rows)},
                "name": "style", "step": 500}, embeddings_dir(executor) / "style.pt")
    cond, _ = encode(executor, "sd1", "embedding:style a circle")
    expected, _ = reference(checkpoints, "sd1", {"clip_l": rows}, [0, 1, 2, "a circle"])
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)


def test_sdxl_embedding_gives_each_encoder_its_vectors(executor: Executor, checkpoints: Path) -> None:
    rows = {"clip_l": vectors(2, 64, seed=3), "clip_g": vectors(2, 128, seed=4)}
    save_file(rows, str(embeddings_dir(executor) / "xl.safetensors"))
    cond, pooled = encode(executor, "sdxl", "a embedding:xl circle")
    expected, expected_pooled = reference(checkpoints, "sdxl", rows, ["a", 0, 1, "circle"])
    assert cond.shape == (1, 77, 64 + 128)
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    # An SD1 model reads the clip_l part of the same file.
    sd1, _ = encode(executor, "sd1", "a embedding:xl circle")
    torch.testing.assert_close(sd1, reference(checkpoints, "sd1", {"clip_l": rows["clip_l"]},
                                              ["a", 0, 1, "circle"])[0], rtol=1e-5, atol=1e-5)


def test_weighted_embedding(executor: Executor, checkpoints: Path) -> None:
    rows = vectors(2, 64, seed=5)
    save_file({"emb_params": rows}, str(embeddings_dir(executor) / "shiny.safetensors"))
    cond, _ = encode(executor, "sd1", "a (embedding:shiny:1.2) circle")
    expected, _ = reference(checkpoints, "sd1", {"clip_l": rows}, ["a", 0, 1, "circle"], weights={2: 1.2, 3: 1.2})
    torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)
    unweighted, _ = encode(executor, "sd1", "a embedding:shiny circle")
    assert not torch.allclose(cond[0, 2:4], unweighted[0, 2:4], atol=1e-3)
    torch.testing.assert_close(cond[0, :2], unweighted[0, :2])  # only the embedding's positions are weighted


def test_names_endings_subfolders_and_missing_names(executor: Executor, checkpoints: Path) -> None:
    rows = vectors(1, 64, seed=6)
    (embeddings_dir(executor) / "sub").mkdir()
    torch.save({"emb_params": rows}, embeddings_dir(executor) / "sub" / "dot.bin")
    expected, _ = reference(checkpoints, "sd1", {"clip_l": rows}, ["a", 0, "circle"])
    for prompt in ("a embedding:sub/dot circle", "a embedding:sub/dot.bin circle", "a embedding:sub/dot, circle"):
        cond, _ = encode(executor, "sd1", prompt)
        if prompt.endswith(", circle"):  # the comma is stripped from the name and kept as text
            expected_comma, _ = reference(checkpoints, "sd1", {"clip_l": rows}, ["a", 0, ",", "circle"])
            torch.testing.assert_close(cond, expected_comma, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(cond, expected, rtol=1e-5, atol=1e-5)
    plain, _ = encode(executor, "sd1", "a circle")
    for missing in ("a embedding:nothing circle", "a embedding:../checkpoints/tiny-sd1 circle"):
        torch.testing.assert_close(encode(executor, "sd1", missing)[0], plain)  # dropped with a warning


def test_changed_embedding_file_is_noticed_by_the_cache(executor: Executor) -> None:
    path = embeddings_dir(executor) / "shiny.safetensors"
    save_file({"emb_params": vectors(2, 64, seed=7)}, str(path))
    graph = {"ckpt": checkpoint_loader("tiny-sd1.safetensors"), "pos": text("a embedding:shiny circle"),
             "other": text("a circle")}
    first = run_prompt(executor, graph, cond=["pos", 0])["cond"][0][0]
    again = run_prompt(executor, graph, cond=["pos", 0])
    assert "pos" in next(e for e in again["events"] if e.type == "execution_cached").nodes
    save_file({"emb_params": vectors(2, 64, seed=8)}, str(path))
    changed = run_prompt(executor, graph, cond=["pos", 0])["cond"][0][0]
    assert not torch.allclose(first, changed, atol=1e-3)
    plain = run_prompt(executor, graph, cond=["other", 0])
    save_file({"emb_params": vectors(2, 64, seed=9)}, str(path))
    plain_again = run_prompt(executor, graph, cond=["other", 0])  # a prompt without embeddings stays cached
    assert "other" in next(e for e in plain_again["events"] if e.type == "execution_cached").nodes
    assert torch.equal(plain["cond"][0][0], plain_again["cond"][0][0])


def test_unreadable_embedding_file_is_an_error_naming_it(executor: Executor) -> None:
    torch.save({"made": datetime.datetime(2024, 1, 1)}, embeddings_dir(executor) / "pickled.pt")
    graph = {"ckpt": checkpoint_loader("tiny-sd1.safetensors"), "pos": text("embedding:pickled circle"),
             "capture": {"class_type": "Capture", "inputs": {"cond": ["pos", 0]}}}
    sink = ListSink()
    outcome = executor.execute(graph, "p", sink)
    assert outcome.status_str == "error"
    error = next(e for e in sink.events if isinstance(e, ExecutionError))
    assert error.node_id == "pos" and "pickled.pt" in error.exception_message
    assert "safetensors" in error.exception_message


def test_embedding_names_are_what_prompts_use(tmp_path: Path) -> None:
    root = tmp_path / "models" / "embeddings"
    (root / "sub").mkdir(parents=True)
    for name in ("shiny.safetensors", "shiny.pt", "sub/dot.bin", "notes.txt", "old.ckpt"):
        (root / name).write_bytes(b"x")
    folders = Folders(tmp_path / "in", tmp_path / "out", tmp_path / "tmp", (tmp_path / "models",))
    assert folders.embedding_names() == ["old", "shiny", "sub/dot"]
