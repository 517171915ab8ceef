"""MQAR: the examples' answers, determinism and the loader interface (exact match: test_evaluate.py)."""

import pytest
import torch

from hybrid_ray.data import describe, prepare
from hybrid_ray.data.synthetic import MQARConfig, make_example, parse_mqar
from hybrid_ray.errors import DataError
from hybrid_ray.spec import DataSpec

SOURCE = "mqar?pairs=8&vocab=64&train_examples=200&val_examples=32"


def answers_from_context(ids, cfg):
    """Solve an example the slow, obvious way: look each query up among the pairs."""
    pairs = {int(ids[2 * i]): int(ids[2 * i + 1]) for i in range(cfg.pairs)}
    return [pairs[int(ids[j])] for j in range(2 * cfg.pairs, cfg.example_len, 2)]


def test_examples_hold_the_right_answers():
    cfg = parse_mqar(SOURCE.partition("?")[2])
    assert (cfg.pairs, cfg.queries, cfg.vocab, cfg.example_len) == (8, 8, 64, 32)
    for i in range(20):
        ids, labels = make_example(cfg, "train", i)
        keys, values = ids[0:16:2], ids[1:16:2]
        assert len(set(keys.tolist())) == 8 and keys.max() <= cfg.num_keys < values.min() and values.max() < 64
        answers = labels[labels != -100].tolist()
        assert answers == answers_from_context(ids, cfg) == ids[17::2].tolist()
        assert (labels[:17] == -100).all() and (labels[16::2] == -100).all()


def test_examples_are_deterministic_and_splits_differ():
    cfg = MQARConfig(pairs=4, vocab=32)
    a, b = make_example(cfg, "train", 5), make_example(cfg, "train", 5)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (make_example(cfg, "val", 5)[0] == a[0]).all()
    assert not (make_example(MQARConfig(pairs=4, vocab=32, seed=1), "train", 5)[0] == a[0]).all()


def test_fewer_queries_than_pairs():
    cfg = parse_mqar("pairs=6&queries=2&vocab=64")
    ids, labels = make_example(cfg, "train", 0)
    assert cfg.example_len == 16 and (labels != -100).sum() == 2


def test_dataset_handle_and_loader():
    ds = prepare(DataSpec(source=SOURCE))
    assert (ds.task, ds.vocab_size, ds.model_vocab_size, ds.eos_id, ds.path) == ("mqar", 64, 64, 0, None)
    assert "mqar" in describe(ds)
    loader = ds.train_loader(seq_len=40, global_batch=8, micro_batch=4, rank=0, world_size=1, seed=0)
    assert loader.steps_per_epoch == 25
    b = loader.next_step()[0]
    assert b.input_ids.shape == b.labels.shape == (4, 40) and b.num_tokens == 4 * 8
    assert (b.input_ids[:, 32:] == 0).all() and (b.labels[:, 32:] == -100).all()
    state = loader.state_dict()
    want = loader.next_step()
    again = ds.train_loader(seq_len=40, global_batch=8, micro_batch=2, rank=0, world_size=2, seed=0)
    again.load_state_dict(state)
    assert torch.equal(again.next_step()[0].input_ids, want[0].input_ids[:2])
    val = ds.val_batches(seq_len=32, micro_batch=8, rank=0, world_size=1, max_tokens=16 * 32)
    again = ds.val_batches(seq_len=32, micro_batch=8, rank=0, world_size=1, max_tokens=16 * 32)
    assert len(val) == 2 and all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(val, again))
    assert ds.tokenizer.decode([3, 4]) == "3 4"


def test_bad_options_and_modes():
    with pytest.raises(DataError, match="did you mean 'pairs'"):
        parse_mqar("pair=4")
    with pytest.raises(DataError, match="integer"):
        parse_mqar("pairs=four")
    with pytest.raises(DataError, match="too small"):
        parse_mqar("pairs=40&vocab=64")
    ds = prepare(DataSpec(source=SOURCE))
    with pytest.raises(DataError, match="seq_len >= 32"):
        ds.train_loader(seq_len=16, global_batch=8, micro_batch=8, rank=0, world_size=1, seed=0)
    loader = ds.train_loader(seq_len=32, global_batch=8, micro_batch=8, rank=0, world_size=1, seed=0, packed=True)
    with pytest.raises(DataError, match="packed"):
        loader.next_step()
