"""Generation with the model's cache: the same tokens as recomputing every prefix, EOS, several prompts, bad values."""

import pytest
import torch

from hybrid_ray.cli import main
from hybrid_ray.data.tokenizer import ByteTokenizer
from hybrid_ray.inference.generate import SamplingOptions, TextStream, decode, decode_reference, generate, next_tokens
from hybrid_ray.model import build_model, save_model
from hybrid_ray.spec import ModelSpec

CPU = torch.device("cpu")
SHAPES = {  # a window shorter than what is generated, GQA and more value heads than key heads
    "deltanet": [],
    "hybrid": [1],
    "transformer": [0, 1],
}


def model(attn, seed=0):
    spec = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_v_heads=4, head_dim=32, attn_layers=attn,
                     attn_num_heads=4, attn_num_kv_heads=2, attn_window=16, vocab_size=320)
    return build_model(spec, "torch", seed=seed).eval(), spec


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_greedy_decoding_with_the_cache_equals_recomputing(kind):
    m, _ = model(SHAPES[kind])
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    greedy = dict(max_new_tokens=40, temperature=0)
    cached = decode(m, prompts, SamplingOptions(**greedy), None, CPU)
    recomputed = decode(m, prompts, SamplingOptions(**greedy, use_cache=False), None, CPU)
    assert cached == recomputed and all(len(t) == 40 for t in cached)
    # the engine's step equals the model's own cached forward
    assert cached == decode_reference(m, prompts, SamplingOptions(**greedy), None, CPU).tokens
    alone = [decode(m, [p], SamplingOptions(**greedy), None, CPU)[0] for p in prompts]
    assert alone == cached  # two prompts at once equal each alone
    uneven = decode(m, [prompts[0], prompts[1][:3]], SamplingOptions(**greedy), None, CPU)
    assert uneven[0] == cached[0] and uneven[1] == decode(m, [prompts[1][:3]], SamplingOptions(**greedy), None, CPU)[0]


@pytest.mark.parametrize("kind", sorted(SHAPES))
def test_prompts_of_different_lengths_in_one_batch_equal_each_alone(kind):
    """Rows at different positions share one batch: lengths 1, 4 and 23 (past the 16-token window), one row ending
    early at EOS, the tokens after it trimmed."""
    m, _ = model(SHAPES[kind], seed=1)
    prompts = [[7], [1, 2, 3, 4], list(range(30, 53))]
    greedy = SamplingOptions(max_new_tokens=24, temperature=0)
    alone = [decode(m, [p], greedy, None, CPU)[0] for p in prompts]
    assert decode(m, prompts, greedy, None, CPU) == alone
    eos = alone[1][5]
    ended = [t[: t.index(eos) + 1] if eos in t else t for t in alone]
    assert decode(m, prompts, greedy, eos, CPU) == ended
    assert decode(m, prompts, greedy, eos, CPU, check_every=1) == ended
    assert decode_reference(m, prompts, greedy, eos, CPU).tokens == ended


def test_sampling_with_the_engine_follows_the_seed():
    m, _ = model([1])
    hot = SamplingOptions(max_new_tokens=20, temperature=1.0, seed=3)
    a, b = decode(m, [[1, 2], [3]], hot, None, CPU), decode(m, [[1, 2], [3]], hot, None, CPU)
    assert a == b and a != decode(m, [[1, 2], [3]], SamplingOptions(max_new_tokens=20, temperature=1.0, seed=4), None, CPU)


def test_text_streams_incrementally_and_adds_up_to_the_final_text():
    tok = ByteTokenizer()
    text = "plain, héllo wörld ✓ — 日本"
    stream = TextStream(tok)
    pieces = [stream.push(t) for t in tok.encode(text).tolist()]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert pieces[-1] == "本" and pieces[-2] == "" and pieces[-3] == ""  # a 3-byte character comes out whole
    cut = TextStream(tok)  # a character cut short at the end comes out at finish()
    streamed = "".join(cut.push(t) for t in [104, 0xC3]) + cut.finish(tok.decode([104, 0xC3]))
    assert streamed == tok.decode([104, 0xC3])


def test_streamed_text_equals_the_final_text(tmp_path):
    m, spec = model([1], seed=2)
    save_model(m, spec, tmp_path / "m")
    ByteTokenizer().save(tmp_path / "m")
    pieces: list[str] = []
    result = generate(str(tmp_path / "m"), ["é"], SamplingOptions(max_new_tokens=60, temperature=1.0),
                      on_text=lambda _, text: pieces.append(text))
    assert "".join(pieces) == result.completions[0] and len(pieces) > 10
    batched = generate(str(tmp_path / "m"), ["ab", "c"], SamplingOptions(max_new_tokens=8, temperature=0), batch=3)
    assert len(batched.completions) == 6 and batched.completions[0] == batched.completions[2]
    assert batched.first_token_s > 0 and batched.decode_tokens_per_s > 0


def test_decoding_stops_at_eos_per_sequence():
    m, _ = model([1])
    free = decode(m, [[5, 6, 7]], SamplingOptions(max_new_tokens=30, temperature=0), None, CPU)[0]
    eos = free[7]
    stopped = decode(m, [[5, 6, 7]], SamplingOptions(max_new_tokens=30, temperature=0), eos, CPU)[0]
    assert stopped == free[: free.index(eos) + 1] and stopped[-1] == eos


def test_sampling_follows_the_seed_top_k_and_top_p():
    logits = torch.tensor([[0.0, 1.0, 2.0, 8.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(next_tokens(logits, SamplingOptions(top_k=2, temperature=1.0), g).flatten().tolist()) <= {2, 3}
    assert set(next_tokens(logits, SamplingOptions(top_p=0.5, top_k=0), g).flatten().tolist()) == {3}
    a = next_tokens(logits, SamplingOptions(temperature=5.0, top_k=0), torch.Generator().manual_seed(1))
    b = next_tokens(logits, SamplingOptions(temperature=5.0, top_k=0), torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and len(set(a.flatten().tolist())) > 1


def test_the_command_streams_and_reports_speed(tmp_path, capsys):
    m, spec = model([1])
    save_model(m, spec, tmp_path / "m")
    ByteTokenizer().save(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--prompt", "def f(", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    expected = generate(str(tmp_path / "m"), ["def f("], SamplingOptions(max_new_tokens=12, temperature=0))
    assert out == "def f(" + expected.completions[0] + "\n"
    assert "tokens in" in err and "tokens/s" in err and "first token after" in err
    assert main(["generate", str(tmp_path / "m"), "--prompt", "def f(", "--max-new-tokens", "12", "--temperature", "0",
                 "--batch", "4", "--no-graph"]) == 0
    out, err = capsys.readouterr()
    assert out == "def f(" + expected.completions[0] + "\n---\n" and "batch 4" in err
    assert main(["generate", str(tmp_path / "m"), "--prompt", "def f(", "--max-new-tokens", "12", "--temperature", "0",
                 "--no-cache"]) == 0
    assert capsys.readouterr().out == "def f(" + expected.completions[0] + "\n"
    (tmp_path / "prompts.txt").write_text("one\ntwo\n")
    assert main(["generate", str(tmp_path / "m"), "--prompts", str(tmp_path / "prompts.txt"), "--prompt", "zero",
                 "--max-new-tokens", "5", "--temperature", "0"]) == 0
    blocks = capsys.readouterr().out.split("\n---\n")
    assert len(blocks) == 4 and [b[:4] for b in blocks[:3]] == ["zero", "one" + blocks[1][3], "two" + blocks[2][3]]


@pytest.mark.parametrize("args, fragment", [
    (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 1"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-k", "-3"], "--top-k must be >= 0"),
])
def test_bad_values_are_one_line(tmp_path, capsys, args, fragment):
    m, spec = model([1])
    save_model(m, spec, tmp_path)
    ByteTokenizer().save(tmp_path)
    assert main(["generate", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_a_prompts_file_is_read_by_the_library_and_a_bad_one_is_one_line(tmp_path, capsys):
    """`read_prompts` (inference/generate.py) reads `--prompts`: one prompt a line, blank lines skipped; a file that
    is missing or not text is refused in one line, by the library and by the CLI alike."""
    from hybrid_ray.errors import SpecError
    from hybrid_ray.inference.generate import read_prompts

    (tmp_path / "prompts.txt").write_text("one\n\n  \ntwo words\n")
    assert read_prompts(tmp_path / "prompts.txt") == ["one", "two words"]
    (tmp_path / "binary.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(SpecError, match=r"^--prompts file .*binary.txt is not UTF-8 text: invalid start byte at byte 3"):
        read_prompts(tmp_path / "binary.txt")
    with pytest.raises(SpecError, match=r"^cannot read --prompts file .*missing.txt: No such file or directory$"):
        read_prompts(tmp_path / "missing.txt")
    assert main(["generate", str(tmp_path), "--prompts", str(tmp_path / "binary.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --prompts file ") and "is not UTF-8 text" in err[0]


def test_missing_folders_and_diverged_models_are_refused_in_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nothing")]) == 1
    assert "no model found" in capsys.readouterr().err
    m, spec = model([1])
    with torch.no_grad():
        m.lm_head.weight[0, 0] = float("nan")
    save_model(m, spec, tmp_path / "nan")
    ByteTokenizer().save(tmp_path / "nan")
    assert main(["generate", str(tmp_path / "nan")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite weights (lm_head.weight" in err[0] and "diverged" in err[0]


@pytest.mark.parametrize("damage", ["missing", "diverged", "config.json"])
def test_a_model_that_does_not_load_prints_no_prompt_before_its_error(tmp_path, capsys, damage):
    """Issue 36: `hybrid-ray generate /nonexistent --prompt x` printed `xerror: no model found ...`: the prompt is
    echoed only once the model has loaded."""
    folder = tmp_path / "m"
    if damage != "missing":
        m, spec = model([1])
        if damage == "diverged":
            with torch.no_grad():
                m.lm_head.weight[0, 0] = float("nan")
        save_model(m, spec, folder)
        ByteTokenizer().save(folder)
        if damage == "config.json":
            (folder / "config.json").write_bytes(b'{"vocab')
    assert main(["generate", str(folder), "--prompt", "x"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err


def test_a_load_under_a_second_is_printed_in_milliseconds(tmp_path, capsys):
    """Issue 36: a CPU printed `model loaded in 0.0 s`."""
    import re

    from hybrid_ray.cli import _seconds

    m, spec = model([1])
    save_model(m, spec, tmp_path)
    ByteTokenizer().save(tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "def main("]) == 0  # the user's defaults
    out, err = capsys.readouterr()
    assert out.startswith("def main(")
    assert re.search(r"; model loaded in [1-9]\d* ms$", err.strip()), err
    assert (_seconds(0.0123), _seconds(0.9994), _seconds(1.26), _seconds(42.0)) == ("12 ms", "999 ms", "1.3 s", "42.0 s")


def test_a_checkpoint_folder_generates_and_scores_with_its_runs_tokenizer(tmp_path, capsys):
    """A checkpoint folder holds the model but no tokenizer (the run's model/ folder has it): generate and eval of an
    earlier checkpoint, as the diverged-model error advises, failed on the missing tokenizer."""
    m, spec = model([1])
    run = tmp_path / "run"
    for folder in (run / "model", run / "checkpoint_00000010"):
        save_model(m, spec, folder)
    ByteTokenizer().save(run / "model")
    args = ["--prompt", "def f(", "--max-new-tokens", "8", "--temperature", "0"]
    assert main(["generate", str(run), *args]) == 0
    from_run = capsys.readouterr().out
    assert main(["generate", str(run / "checkpoint_00000010"), *args]) == 0
    assert capsys.readouterr().out == from_run
    for i in range(20):
        (tmp_path / "docs" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "docs" / f"{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    assert main(["eval", str(run / "checkpoint_00000010"), "--task", "perplexity", "--data", str(tmp_path / "docs"),
                 "--seq-len", "32"]) == 0
    assert "perplexity " in capsys.readouterr().out


def test_fla_decodes_with_its_own_cache_like_the_twin(fla_interpreted):
    """FLA's model (its fused-recurrent kernels interpreted on the CPU) decodes greedily with its cache."""
    spec = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, head_dim=32, attn_layers=[1], attn_num_heads=4,
                     vocab_size=100)
    fla = build_model(spec, "fla", fuse_cross_entropy=False).eval()
    twin = build_model(spec, "torch").eval()
    greedy = SamplingOptions(max_new_tokens=6, temperature=0)
    engine = decode(fla, [[3, 4, 5, 6]], greedy, None, CPU)  # the engine's step on FLA's weights
    assert engine == decode(twin, [[3, 4, 5, 6]], greedy, None, CPU)
    assert engine == decode_reference(fla, [[3, 4, 5, 6]], greedy, None, CPU).tokens  # FLA's own cache


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_fla_backend_without_a_gpu_is_one_line(tmp_path, capsys):
    m, spec = model([1])
    save_model(m, spec, tmp_path)
    ByteTokenizer().save(tmp_path)
    assert main(["generate", str(tmp_path), "--backend", "fla"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backend fla needs a CUDA GPU" in err[0] and "--backend torch" in err[0], err


@pytest.mark.parametrize("file", ["config.json", "hybrid_ray_tokenizer.json"])
@pytest.mark.parametrize("content", [b"", b"[1, 2]", b'{"vocab', bytes(range(128, 256))])
def test_a_damaged_model_folder_is_one_line(tmp_path, capsys, file, content):
    m, spec = model([1])
    save_model(m, spec, tmp_path)
    ByteTokenizer().save(tmp_path)
    (tmp_path / file).write_bytes(content)
    assert main(["generate", str(tmp_path), "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and file in err[0], err


def test_the_decoding_benchmark_runs_on_a_cpu_and_writes_its_json(tmp_path, monkeypatch):
    import json
    import sys

    from benchmarks import bench_generate

    monkeypatch.setattr(sys, "argv", [
        "bench_generate.py", "--out-dir", str(tmp_path), "--device", "cpu", "--preset", "tiny",
        "--variants", "h100_hybrid_sparse", "--batches", "1", "2", "--prompt-len", "16", "--decode-tokens", "8",
        "--no-cache-tokens", "4", "--eval-questions", "6", "--command-runs", "1", "--command-tokens", "4"])
    bench_generate.main()
    report = json.loads((tmp_path / "generate-cpu-tiny.json").read_text())
    assert "gpus" in report["machine"] and [(r["variant"], r["batch"]) for r in report["results"]] == [
        ("h100_hybrid_sparse", 1), ("h100_hybrid_sparse", 2)]
    for r in report["results"]:
        assert r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["first_token_s"] > 0
        assert r["tokens"] == 8 * r["batch"]
    assert report["results"][0]["cached_speedup_vs_no_cache"] > 0
    assert report["eval"]["h100_hybrid_sparse"]["questions"] == 6
    assert report["eval"]["h100_hybrid_sparse"]["source"].startswith("synthetic")  # no ARC-Easy file here
    # `hybrid-ray generate` itself, in a new process, on the saved pure DeltaNet: its load and first token
    command = report["generate_command"]
    assert command["variant"] == "h100_deltanet" and len(command["runs"]) == 1 and command["runs"][0]["rc"] == 0
    assert 0 < command["load_s"] < command["model_ready_from_start_s"] <= command["first_token_from_start_s"]
    assert {"imports", "weights read", "graph capture"} <= set(command["runs"][0]["startup"])
    # issue 47: the same for a GPT-2-style tokenizer folder, and `eval` of one question, each from its process's start
    assert sorted(report["startup"]) == ["byte", "gpt2"] and report["startup"]["byte"] == command
    gpt2 = report["startup"]["gpt2"]
    assert gpt2["tokenizer"] == "gpt2" and gpt2["runs"][0]["rc"] == 0 and gpt2["vocab"] >= 1024
    assert 0 < gpt2["load_s"] < gpt2["model_ready_from_start_s"] <= gpt2["first_token_from_start_s"]
    for entry in (command, gpt2):
        assert entry["eval"]["rc"] == 0 and entry["first_question_from_start_s"] > entry["eval"]["startup"]["model_ready_s"]
    assert report["skipped_for_deadline"] == []


def test_generate_and_eval_print_where_their_start_up_went(tmp_path, capsys):
    """Issue 35: each phase of the start-up on one line (a CPU loads the tiny model in milliseconds: each phase is
    printed in ms), ending with when the model was ready and the first token came, from the command's start."""
    import json
    import re

    from hybrid_ray.startup import PHASES

    m, spec = model([1])
    save_model(m, spec, tmp_path / "m")
    ByteTokenizer().save(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--prompt", "def f(", "--max-new-tokens", "4"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(" ms") and "model loaded in" in err[-1]  # the speed line stays the last one
    (line,) = [line for line in err if line.startswith("start-up: ")]
    for phase in PHASES:
        assert re.search(rf"[:,] {phase} \d+ ms[,(]? ?", line), (phase, line)
    ready, first = re.search(r"\(model ready (\d+) ms after the start, first token (\d+) ms\)$", line).groups()
    assert 0 < int(ready) <= int(first) < 1000, line
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"question": "q?", "choices": {"text": ["a", "bc"], "label": ["A", "B"]},
                               "answerKey": "A"}))
    assert main(["eval", str(tmp_path / "m"), "--task", "arc_easy", "--data", str(arc)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("arc_easy: acc ")
    (line,) = [line for line in err.splitlines() if line.startswith("start-up: ")]
    assert all(f" {phase} " in line for phase in PHASES) and "model ready" in line and "first token" not in line


def test_generate_and_eval_import_nothing_of_ray(tmp_path):
    """Issue 35: the inference commands' start-up imports no Ray (seconds of imports on a small node): the library's
    generate() and both commands, in a fresh process, leave `ray` out of sys.modules."""
    import json
    import subprocess
    import sys

    m, spec = model([1])
    save_model(m, spec, tmp_path / "m")
    ByteTokenizer().save(tmp_path / "m")
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                               "answerKey": "A"}))
    code = f"""
import sys
from hybrid_ray.inference.generate import SamplingOptions, generate
generate({str(tmp_path / "m")!r}, ["x"], SamplingOptions(max_new_tokens=3))
from hybrid_ray.cli import main
assert main(["generate", {str(tmp_path / "m")!r}, "--max-new-tokens", "3"]) == 0
assert main(["eval", {str(tmp_path / "m")!r}, "--task", "arc_easy", "--data", {str(arc)!r}]) == 0
print(sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:]


# what the inference commands must not import (issue 47: FLA's whole package is 6.8 s of a CPU's start-up, and on an
# H100 node `imports 12.61 s` was most of a 14 s wait for the first token): FLA and triton (the cached step and its
# prefill are plain PyTorch), transformers (a tokenizer.json or GPT-2's files are read by `tokenizers`), pyarrow (local
# folders), Ray
NOT_IMPORTED = ("fla", "triton", "transformers", "pyarrow", "ray", "datasets")


def imported_by_generate_and_eval(tmp_path, device="cpu"):
    """The top-level packages of those names in sys.modules after `generate` and `eval` of a byte-tokenizer and a
    GPT-2-tokenizer model folder, each command in a fresh process (as a user runs them)."""
    import json
    import os
    import subprocess
    import sys

    from test_data_tokenizer import make_hf_tokenizer

    from hybrid_ray.data.tokenizer import load_tokenizer

    m, spec = model([1])
    save_model(m, spec, tmp_path / "byte")
    ByteTokenizer().save(tmp_path / "byte")
    save_model(m, spec, tmp_path / "gpt2")
    load_tokenizer(make_hf_tokenizer(tmp_path / "tok", "gpt2")).save(tmp_path / "gpt2")
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"question": "q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                               "answerKey": "A"}))
    found = {}
    for folder in ("byte", "gpt2"):
        for command in (["generate", str(tmp_path / folder), "--max-new-tokens", "3", "--prompt", "hello"],
                        ["eval", str(tmp_path / folder), "--task", "arc_easy", "--data", str(arc)]):
            code = f"""
import sys
from hybrid_ray.cli import main
assert main({command!r}) == 0
print(sorted({{name.split(".")[0] for name in sys.modules}} & {set(NOT_IMPORTED)!r}))
"""
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if device == "cpu" else "0"}
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            found[f"{command[0]} {folder}"] = done.stdout.strip().splitlines()[-1]
    return found


def test_generate_and_eval_import_no_fla_transformers_or_pyarrow(tmp_path):
    """Issue 47: the start-up imports only what the commands run, for the byte tokenizer and a tokenizer folder."""
    found = imported_by_generate_and_eval(tmp_path)
    assert found == dict.fromkeys(["generate byte", "eval byte", "generate gpt2", "eval gpt2"], "[]"), found


@pytest.mark.gpu(budget_s=90)
def test_on_a_gpu_generate_and_eval_import_no_fla_and_decode_as_flas_model(tmp_path):
    """Issue 47 on a GPU: `auto` loads the twin (no FLA, no transformers in the process), and its greedy tokens are the
    ones FLA's own model decodes with the same weights (the engine's step and prefill are plain PyTorch on both)."""
    from hybrid_ray.inference.generate import load_for_inference

    found = imported_by_generate_and_eval(tmp_path, device="cuda")
    assert found == dict.fromkeys(["generate byte", "eval byte", "generate gpt2", "eval gpt2"], "[]"), found
    cuda = torch.device("cuda", 0)
    twin, _, device = load_for_inference(str(tmp_path / "byte"))
    fla, _, _ = load_for_inference(str(tmp_path / "byte"), backend="fla")
    assert device == cuda and getattr(twin, "hybrid_backend") == "torch" and getattr(fla, "hybrid_backend") == "fla"
    prompts = [[5, 6, 7], list(range(40, 70))]
    greedy = SamplingOptions(max_new_tokens=24, temperature=0)
    assert decode(twin, prompts, greedy, None, cuda) == decode(fla, prompts, greedy, None, cuda)
