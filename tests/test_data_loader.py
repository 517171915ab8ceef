"""The per-rank loader: world-size independence, exact resume, epochs, fixed validation, packed documents."""

import json
import logging

import numpy as np
import pytest
import torch

from hybrid_ray.data import Batch, BatchLoader, prepare
from hybrid_ray.data.loader import eval_batches
from hybrid_ray.errors import DataError
from hybrid_ray.spec import DataSpec

GB, SEQ = 8, 16


class IndexBlocks:
    """Blocks whose content is their own index, so tests can see exactly which blocks a batch holds."""

    def __init__(self, n):
        self.num_blocks = n

    def batch(self, idx, packed):
        x = torch.as_tensor(np.asarray(idx), dtype=torch.long)[:, None]
        return Batch(x, x.clone())


def blocks_of_step(n_blocks, world, steps, micro=1, seed=0, start_state=None):
    """Per global step, the block indices all ranks together served, in rank then micro-batch order."""
    loaders = [BatchLoader(IndexBlocks(n_blocks), seq_len=SEQ, global_batch=GB, micro_batch=micro, rank=r,
                           world_size=world, seed=seed) for r in range(world)]
    if start_state:
        for loader in loaders:
            loader.load_state_dict(start_state)
    return [[int(i) for loader in loaders for b in loader.next_step() for i in b.input_ids[:, 0]] for _ in range(steps)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("loader")
    texts = [f"doc {i} " + "abcdefghij"[: i % 10] * (i % 13 + 1) for i in range(600)]
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return prepare(DataSpec(source=str(d / "c.jsonl"), cache_dir=str(d / "cache"), val_fraction=0.2))


def test_world_size_does_not_change_the_blocks_of_a_step():
    one = blocks_of_step(50, world=1, steps=14, micro=2)  # 6 steps per epoch: crosses two epoch boundaries
    assert blocks_of_step(50, world=2, steps=14, micro=2) == one
    assert blocks_of_step(50, world=4, steps=14, micro=1) == one
    assert blocks_of_step(50, world=8, steps=14, micro=1) == one


def test_ranks_are_disjoint_and_an_epoch_never_repeats_a_block():
    loaders = [BatchLoader(IndexBlocks(50), seq_len=SEQ, global_batch=GB, micro_batch=2, rank=r, world_size=2,
                           seed=3) for r in range(2)]
    assert loaders[0].steps_per_epoch == 6 and loaders[0].accum == 2
    seen = [set(), set()]
    for _ in range(6):
        for r, loader in enumerate(loaders):
            seen[r].update(int(i) for b in loader.next_step() for i in b.input_ids[:, 0])
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 48  # 2 leftover blocks dropped this epoch
    assert loaders[0].epoch == 1.0


def test_epochs_roll_over_with_a_new_order_and_a_warning(caplog):
    steps = blocks_of_step(24, world=1, steps=6)  # 3 steps per epoch
    epoch0, epoch1 = sum(steps[:3], []), sum(steps[3:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(24)) and epoch0 != epoch1
    loader = BatchLoader(IndexBlocks(24), seq_len=SEQ, global_batch=GB, micro_batch=8, rank=0, world_size=1, seed=0)
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            loader.next_step()
    assert "repeats" in caplog.text and loader.epoch == pytest.approx(4 / 3)


def test_seed_changes_the_order():
    assert blocks_of_step(50, world=1, steps=2, seed=0) != blocks_of_step(50, world=1, steps=2, seed=1)


def test_resume_mid_epoch_and_on_another_world_size():
    full = blocks_of_step(50, world=1, steps=12)
    loader = BatchLoader(IndexBlocks(50), seq_len=SEQ, global_batch=GB, micro_batch=8, rank=0, world_size=1, seed=0)
    for _ in range(4):
        loader.next_step()
    state = json.loads(json.dumps(loader.state_dict()))  # as a checkpoint stores it
    assert blocks_of_step(50, world=1, steps=8, start_state=state) == full[4:]
    assert blocks_of_step(50, world=2, steps=8, start_state=state) == full[4:]
    assert blocks_of_step(50, world=4, steps=8, micro=2, start_state=state) == full[4:]


def test_resume_is_exact_on_real_shards(dataset):
    kw = dict(seq_len=SEQ, global_batch=GB, seed=7)
    ref = dataset.train_loader(micro_batch=4, rank=0, world_size=1, **kw)
    for _ in range(3):
        ref.next_step()
    state = ref.state_dict()
    expected = [torch.cat([b.input_ids for b in ref.next_step()]) for _ in range(5)]
    resumed = [dataset.train_loader(micro_batch=2, rank=r, world_size=2, **kw) for r in range(2)]
    for loader in resumed:
        loader.load_state_dict(state)
    for want in expected:
        got = torch.cat([b.input_ids for loader in resumed for b in loader.next_step()])
        assert torch.equal(got, want)


def test_load_state_dict_rejects_another_layout(dataset):
    loader = dataset.train_loader(seq_len=SEQ, global_batch=GB, micro_batch=8, rank=0, world_size=1, seed=0)
    other = dataset.train_loader(seq_len=SEQ * 2, global_batch=GB, micro_batch=8, rank=0, world_size=1, seed=0)
    with pytest.raises(DataError, match="seq_len"):
        other.load_state_dict(loader.state_dict())


def test_lm_batches(dataset):
    loader = dataset.train_loader(seq_len=SEQ, global_batch=GB, micro_batch=2, rank=1, world_size=2, seed=0)
    batches = loader.next_step()
    assert len(batches) == 2
    for b in batches:
        assert b.input_ids.shape == (2, SEQ) and b.input_ids.dtype == torch.long
        assert torch.equal(b.labels, b.input_ids) and b.cu_seqlens is None and b.num_tokens == 2 * SEQ
    # the documented contract: step 0 of epoch 0 is blocks perm[:GB], rank 1 takes the second half
    tokens = np.fromfile(dataset.path / "train.bin", dtype=np.uint16)
    n = len(tokens) // SEQ
    perm = np.random.default_rng([0, 0]).permutation(n)
    want = tokens[: n * SEQ].reshape(n, SEQ)[perm[GB // 2: GB]].astype(np.int64)
    assert torch.equal(torch.cat([b.input_ids for b in batches]), torch.from_numpy(want))


def served(batches):
    return [int(i) for b in batches for i in b.input_ids[:, 0]]


def test_validation_blocks_spread_over_the_whole_split_for_any_world_size():
    one = eval_batches(IndexBlocks(100), seq_len=SEQ, micro_batch=4, rank=0, world_size=1, max_blocks=10)
    assert served(one) == list(range(0, 100, 10)) and [len(b.input_ids) for b in one] == [4, 4, 2]
    for world in (2, 3, 4):
        shares = [eval_batches(IndexBlocks(100), seq_len=SEQ, micro_batch=2, rank=r, world_size=world, max_blocks=10)
                  for r in range(world)]
        assert sum((served(s) for s in shares), []) == served(one)  # same blocks, split into contiguous shares
    odd = served(eval_batches(IndexBlocks(7), seq_len=SEQ, micro_batch=8, rank=0, world_size=1, max_blocks=3))
    assert odd == [0, 2, 4]


def test_validation_without_a_limit_is_the_full_split():
    full = eval_batches(IndexBlocks(13), seq_len=SEQ, micro_batch=4, rank=0, world_size=1)
    assert served(full) == list(range(13))
    assert served(eval_batches(IndexBlocks(13), seq_len=SEQ, micro_batch=4, rank=0, world_size=1, max_blocks=99)) == list(range(13))
    with pytest.raises(DataError, match="validation split has no block"):
        eval_batches(IndexBlocks(0), seq_len=SEQ, micro_batch=4, rank=0, world_size=1)


def test_val_batches_read_the_split_and_repeat_exactly(dataset):
    one = dataset.val_batches(seq_len=SEQ, micro_batch=4, rank=0, world_size=1, max_tokens=6 * SEQ)
    again = dataset.val_batches(seq_len=SEQ, micro_batch=4, rank=0, world_size=1, max_tokens=6 * SEQ)
    assert [len(b.input_ids) for b in one] == [4, 2]
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(one, again))
    tokens = np.fromfile(dataset.path / "val.bin", dtype=np.uint16)
    n = len(tokens) // SEQ
    want = tokens[: n * SEQ].reshape(n, SEQ)[(np.arange(6) * n) // 6].astype(np.int64)
    assert torch.equal(torch.cat([b.input_ids for b in one]), torch.from_numpy(want))
    full = dataset.val_batches(seq_len=SEQ, micro_batch=GB, rank=0, world_size=1)
    assert sum(len(b.input_ids) for b in full) == n


def test_packed_mode_marks_documents_and_rows(dataset):
    loader = dataset.train_loader(seq_len=SEQ * 4, global_batch=GB, micro_batch=4, rank=0, world_size=1, seed=0,
                                  packed=True)
    for b in loader.next_step():
        ids, labels, cu = b.input_ids[0], b.labels[0], b.cu_seqlens
        L = SEQ * 4
        assert b.input_ids.shape == (1, 4 * L) and cu.dtype == torch.int32
        assert cu[0] == 0 and cu[-1] == 4 * L and (cu[1:] > cu[:-1]).all()
        starts = cu[:-1].long()
        assert set(range(0, 4 * L, L)) <= set(starts.tolist())  # every row starts a segment
        inner = [s for s in starts.tolist() if s % L]
        assert inner and all(ids[s - 1] == dataset.eos_id for s in inner)  # documents start right after EOS
        eos_inside = [p + 1 for p in torch.nonzero(ids == dataset.eos_id).flatten().tolist() if (p + 1) % L]
        assert set(eos_inside) <= set(starts.tolist())  # and every document start is marked
        assert (labels[starts] == -100).all()
        keep = torch.ones_like(labels, dtype=torch.bool)
        keep[starts] = False
        assert torch.equal(labels[keep], ids[keep]) and b.num_tokens == 4 * L - len(starts)


def test_packed_val_batches(dataset):
    (b,) = dataset.val_batches(seq_len=SEQ, micro_batch=GB, rank=0, world_size=1, max_tokens=GB * SEQ, packed=True)
    assert b.input_ids.shape == (1, GB * SEQ) and b.cu_seqlens is not None


def test_bad_layouts(dataset):
    with pytest.raises(DataError, match="not divisible"):
        dataset.train_loader(seq_len=SEQ, global_batch=10, micro_batch=4, rank=0, world_size=1, seed=0)
    with pytest.raises(DataError, match="outside"):
        dataset.train_loader(seq_len=SEQ, global_batch=8, micro_batch=4, rank=2, world_size=2, seed=0)
    with pytest.raises(DataError, match="fewer than one global batch"):
        dataset.train_loader(seq_len=SEQ, global_batch=10**6, micro_batch=10**6, rank=0, world_size=1, seed=0)


def test_epochs_for_on_the_handle(dataset):
    blocks = dataset.manifest["splits"]["train"]["tokens"] // SEQ
    assert dataset.epochs_for(blocks // GB, seq_len=SEQ, global_batch=GB) == 1.0
