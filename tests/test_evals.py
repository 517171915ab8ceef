"""Downstream evaluation on tiny task files: answer-only log-likelihoods, acc vs acc_norm, standard errors, perplexity,
results in the run folder, and one-line errors."""

import json
import math

import pytest
import torch

from hybrid_ray.cli import main
from hybrid_ray.data.tokenizer import ByteTokenizer
from hybrid_ray.evals import downstream as evals
from hybrid_ray.evals.downstream import Example, loglikelihoods, score, stderr
from hybrid_ray.model import build_model, save_model
from hybrid_ray.spec import ModelSpec

CPU = torch.device("cpu")


class Unigram(torch.nn.Module):
    """A model whose next-token distribution is fixed: log-probabilities are easy to compute by hand."""

    hybrid_backend = "torch"

    def __init__(self, probs):
        super().__init__()
        self.logits = torch.tensor(probs).log()

    def forward(self, input_ids, cache=None, use_cache=False, **_):
        from hybrid_ray.model.torch_ref import LMOutput

        return LMOutput(None, self.logits.expand(*input_ids.shape, -1).clone(), None)


def test_scores_use_the_answer_tokens_only_and_match_a_hand_computation():
    probs = [0.0] * 257
    probs[ord("a")], probs[ord("b")], probs[ord(" ")], probs[256] = 0.5, 0.2, 0.2, 0.1
    model = Unigram(probs)
    got = loglikelihoods(model, ByteTokenizer(), CPU, [("zzz", " a"), ("q", " bb"), ("long context", "a")])
    assert got[0][0] == pytest.approx(math.log(0.2) + math.log(0.5)) and got[0][2] == 2
    assert got[1][0] == pytest.approx(math.log(0.2) + 2 * math.log(0.2))  # the context's own tokens do not count
    assert got[2][1] is True and got[1][1] is False  # greedy picks "a" everywhere


def test_batched_scores_equal_scoring_each_pair_alone(run_dir):
    """Rows sorted by length and right-padded together score as each (context, answer) alone, however batched."""
    from hybrid_ray.inference.generate import load_for_inference

    model, tok, device = load_for_inference(str(run_dir))
    pairs = [(f"Question {i}: what is {'x' * i}?\nAnswer:", f" {'ab' * (i % 4 + 1)}") for i in range(9)]
    pairs.append(("", " z"))
    alone = []
    with torch.no_grad():
        for context, answer in pairs:
            ctx, cont = (tok.encode(context).tolist() or [tok.eos_id]), tok.encode(answer).tolist()
            logprobs = model(torch.tensor([ctx + cont[:-1]])).logits[0, len(ctx) - 1:].log_softmax(-1)
            alone.append((logprobs.gather(-1, torch.tensor(cont)[:, None]).sum().item(),
                          logprobs.argmax(-1).tolist() == cont, len(cont)))
    for batching in ({}, {"max_rows": 1}, {"max_tokens": 64, "max_rows": 3}):
        got = loglikelihoods(model, tok, device, pairs, **batching)
        assert [(g, n) for _, g, n in got] == [(g, n) for _, g, n in alone]
        assert [s for s, _, _ in got] == pytest.approx([s for s, _, _ in alone], rel=1e-5, abs=1e-5)
    assert evals.batch_rows([3, 9, 5, 9], max_tokens=20, max_rows=8) == [[1, 3], [2, 0]]


def test_acc_norm_differs_from_acc_when_answer_lengths_differ():
    # one example, gold = the long answer: its sum is lower (more tokens), its per-character average higher
    ex = Example("ctx", [" x", " yyyyyyyy"], gold=1)
    lls = [(-2.0, False, 2), (-8.0, False, 9)]
    s = score("arc_easy", [ex], lls)
    assert s["acc"] == 0.0 and s["acc_norm"] == 1.0


def test_standard_error_is_the_sample_standard_deviation_over_root_n():
    values = [1.0, 0.0, 1.0, 1.0]
    p = 0.75
    assert stderr(values) == pytest.approx(math.sqrt(p * (1 - p) / 3))
    assert stderr(values) == pytest.approx(math.sqrt(sum((v - p) ** 2 for v in values) / 3) / 2)


@pytest.fixture()
def run_dir(tmp_path):
    spec = ModelSpec(hidden_size=64, num_layers=2, num_heads=2, head_dim=32, attn_layers=[1], attn_num_heads=4,
                     vocab_size=320)
    run = tmp_path / "run"
    save_model(build_model(spec, "torch"), spec, run / "model")
    ByteTokenizer().save(run / "model")
    (run / "results.json").write_text(json.dumps({"name": "run", "status": "finished", "spec": {"data": {"seq_len": 32}}}))
    return run


def arc_file(path, n=6):
    rows = [{"id": str(i), "question": f"What is {i} plus one?",
             "choices": {"text": [f"{i + 1}", f"{i + 2}", "many"], "label": ["A", "B", "C"]}, "answerKey": "A"}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_arc_from_a_local_file_lands_in_the_run(run_dir, tmp_path, capsys):
    data = arc_file(tmp_path / "arc.jsonl")
    assert main(["eval", str(run_dir), "--task", "arc_easy", "--data", str(data), "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("arc_easy: acc ") and "acc_norm" in out and "(5 examples)" in out and "examples/s" in out
    saved = json.loads((run_dir / "eval" / "arc_easy.json").read_text())
    assert saved["examples"] == 5 and 0 <= saved["acc"] <= 1
    assert json.loads((run_dir / "results.json").read_text())["evals"]["arc_easy"] == saved


def test_ai2s_own_arc_file_scores_like_the_hub_layout(run_dir, tmp_path, capsys):
    """Issue 36: `eval RUN --task arc_easy --data ARC-Easy-Test.jsonl` in the layout AI2 distributes (the choices
    inside the question) was refused with KeyError: 'choices'."""
    rows = [{"id": "Mercury_7175875", "question": {"stem": f"A planet rotates faster ({i}). Which is most likely?",
             "choices": [{"text": "Its density decreases.", "label": "A"}, {"text": "Its years get longer.", "label": "B"},
                         {"text": "Its days get shorter.", "label": "C"}, {"text": "Its gravity grows.", "label": "D"}]},
             "answerKey": "C"} for i in range(3)]
    ai2 = tmp_path / "ARC-Easy-Test.jsonl"
    ai2.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    hub = tmp_path / "hub.jsonl"
    hub.write_text("\n".join(json.dumps({"id": r["id"], "question": r["question"]["stem"], "answerKey": "C",
                                         "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                                                     "label": [c["label"] for c in r["question"]["choices"]]}})
                             for r in rows))
    assert evals.load_examples("arc_easy", str(ai2)) == evals.load_examples("arc_easy", str(hub))
    assert evals.load_examples("arc_easy", str(ai2))[0].gold == 2
    assert main(["eval", str(run_dir), "--task", "arc_easy", "--data", str(ai2)]) == 0
    assert capsys.readouterr().out.startswith("arc_easy: acc ")
    assert json.loads((run_dir / "eval" / "arc_easy.json").read_text())["examples"] == 3


def test_rowans_own_hellaswag_file_scores_like_the_hub_layout(run_dir, tmp_path, capsys):
    """hellaswag_val.jsonl as Rowan distributes it (an int label, ctx beside ctx_a and ctx_b) reads as the hub's rows
    do, and the context is built as evaluation harnesses build it (ctx_a, then ctx_b capitalized)."""
    record = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
              "ctx_b": "he", "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain",
              "label": 3, "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                                      "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
              "source_id": "activitynet~v_-JhWjGDPHMY"}
    rowan = tmp_path / "hellaswag_val.jsonl"
    rowan.write_text(json.dumps(record) + "\n" + json.dumps({**record, "ind": 25}) + "\n")
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps([{**record, "label": "3", "ind": str(i)} for i in (24, 25)]))
    examples = evals.load_examples("hellaswag", str(rowan))
    assert examples == evals.load_examples("hellaswag", str(hub))
    assert examples[0].context == "Roof shingle removal: A man is sitting on a roof. He" and examples[0].gold == 3
    assert main(["eval", str(run_dir), "--task", "hellaswag", "--data", str(rowan)]) == 0
    assert capsys.readouterr().out.startswith("hellaswag: acc ")


@pytest.mark.parametrize("task, record, names", [
    ("arc_easy", {"question": "q", "answerKey": "A"}, ['"choices": {"text"', '{"question": {"stem", "choices"']),
    ("arc_challenge", {"question": {"stem": "q"}, "answerKey": "A"}, ["AI2's own ARC-*.jsonl"]),
    ("hellaswag", {"ctx": "c", "endings": ["a", "b"], "label": ""}, ['"ctx_a", "ctx_b" (or "ctx")', "Rowan's"]),
    ("lambada", {"sentence": "the cat sat"}, ['{"text": "... last word"}']),
])
def test_a_record_of_no_known_layout_names_the_layouts(run_dir, tmp_path, capsys, task, record, names):
    data = tmp_path / "task.jsonl"
    data.write_text(json.dumps(record) + "\n")
    assert main(["eval", str(run_dir), "--task", task, "--data", str(data)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {data} record 0: not a valid {task} record"), err
    assert "expected" in err[0] and all(name in err[0] for name in names), err[0]
    assert "Traceback" not in err[0] and not (run_dir / "eval").exists()


def test_hellaswag_lambada_and_perplexity_layouts(run_dir, tmp_path):
    hs = tmp_path / "hs.json"
    hs.write_text(json.dumps([{"activity_label": "Cooking", "ctx_a": "She cuts", "ctx_b": "the onion [title] slowly",
                               "endings": ["and cries.", "and sings.", "and flies.", "and sleeps."], "label": "0"}] * 3))
    assert evals.evaluate_task(str(run_dir), "hellaswag", data=str(hs))["examples"] == 3
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("\n".join(json.dumps({"text": f"the cat sat on the mat number {i}"}) for i in range(4)))
    result = evals.evaluate_task(str(run_dir), "lambada", data=str(lambada))
    assert result["examples"] == 4 and result["perplexity"] > 1
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"{i}.txt").write_text(f"document {i} " + "text " * 40)
    ppl = evals.evaluate_task(str(run_dir), "perplexity", data=str(corpus))
    assert ppl["tokens"] > 0 and ppl["perplexity"] == pytest.approx(math.exp(ppl["loss"]))


@pytest.mark.parametrize("args, fragment, code", [
    (["--task", "arc_eazy"], "unknown task 'arc_eazy' (did you mean 'arc_easy'?)", 2),
    (["--task", "arc_easy", "--data", "/nonexistent.jsonl"], "task data not found: /nonexistent.jsonl", 1),
    (["--task", "arc_easy", "--limit", "0"], "--limit must be >= 1", 2),
    (["--task", "perplexity"], "--task perplexity needs --data", 2),
])
def test_bad_input_is_one_line(run_dir, capsys, args, fragment, code):
    assert main(["eval", str(run_dir), *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_malformed_task_files_name_the_record(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": {"text": ["a"]}, "answerKey": "A"}) + "\n")
    assert main(["eval", str(run_dir), "--task", "arc_easy", "--data", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 0: not a valid arc_easy record" in err[0]
    good = json.dumps({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"})
    (tmp_path / "broken.jsonl").write_text(f"{good}\n\n{good}\n{{not json\n")
    assert main(["eval", str(run_dir), "--task", "arc_easy", "--data", str(tmp_path / "broken.jsonl")]) == 1
    assert f"{tmp_path / 'broken.jsonl'}:4: not JSON or JSONL" in capsys.readouterr().err  # the file's line number


def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i}.txt").write_text(f"document {i} " + "text " * 20)
    return folder


def test_limit_below_one_is_refused_before_anything_is_written(run_dir, tmp_path, capsys):
    before = (run_dir / "results.json").read_bytes()
    assert main(["eval", str(run_dir), "--task", "perplexity", "--data", str(corpus(tmp_path)), "--limit", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == "error: --limit must be >= 1, got 0", err
    assert (run_dir / "results.json").read_bytes() == before and not (run_dir / "eval").exists()


def test_eval_prints_no_transformers_warning(run_dir, tmp_path, capsys):
    import logging

    # transformers' own handler keeps the stderr of its import time, out of capsys's reach: listen on its logger
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        assert main(["eval", str(run_dir), "--task", "perplexity", "--data", str(corpus(tmp_path))]) == 0
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert capsys.readouterr().out.startswith("perplexity ")
    assert not [r.getMessage() for r in records if "You are using a model of type" in r.getMessage()]
