"""evaluate(): validation loss, accuracy, perplexity and MQAR exact match against hand-computed values."""

import math
from types import SimpleNamespace

import pytest
import torch

from hybrid_ray.data import Batch, prepare
from hybrid_ray.evals.loss import evaluate
from hybrid_ray.spec import DataSpec

CPU = torch.device("cpu")


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits for each batch are given in advance."""

    def __init__(self, logits):
        super().__init__()
        self.logits = list(logits)
        self.calls = 0

    def forward(self, input_ids, cu_seqlens=None, **_):
        out = self.logits[self.calls]
        self.calls += 1
        assert out.shape[:2] == input_ids.shape
        return SimpleNamespace(logits=out)


def test_loss_accuracy_and_perplexity_by_hand():
    # batch 1: positions 0 and 1 predict labels 1 and 2. Uniform logits give -log(1/3) for label 1 (argmax 0: wrong);
    # logits [0, 0, ln 2] give probabilities [1/4, 1/4, 1/2], so -log(1/2) for label 2 (argmax 2: right)
    first = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)], [5.0, 0.0, 0.0]]])
    # batch 2: the label at position 1 is ignored; position 1 predicts label 0 with logits [ln 3, 0, 0]: p = 3/5
    second = torch.tensor([[[0.0, 0.0, 0.0], [math.log(3), 0.0, 0.0], [0.0, 0.0, 0.0]]])
    batches = [Batch(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]])),
               Batch(torch.tensor([[2, 2, 0]]), torch.tensor([[2, -100, 0]]))]
    model = FixedLogits([first, second])
    model.train()
    out = evaluate(model, batches, CPU, "fp32")
    loss = (math.log(3) + math.log(2) + math.log(5 / 3)) / 3
    assert out["val_loss"] == pytest.approx(loss, rel=1e-6)
    assert out["val_accuracy"] == pytest.approx(2 / 3)
    assert out["val_perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert out["val_tokens"] == 3 and "val_exact_match" not in out
    assert model.training  # restored after evaluation


def test_mqar_exact_match_counts_whole_sequences():
    ds = prepare(DataSpec(source="mqar?pairs=8&vocab=64&train_examples=200&val_examples=32"))
    (b,) = ds.val_batches(seq_len=32, micro_batch=8, rank=0, world_size=1, max_tokens=8 * 32)
    perfect = torch.full((8, 32, 64), -1.0)
    for row in range(8):
        for j in range(1, 32):
            if b.labels[row, j] != -100:
                perfect[row, j - 1, b.labels[row, j]] = 1.0  # the model's shift: logits at j-1 predict labels at j
    out = evaluate(FixedLogits([perfect]), [b], CPU, "fp32", task="mqar")
    assert out["val_accuracy"] == 1.0 and out["val_exact_match"] == 1.0 and out["val_tokens"] == 64
    wrong = perfect.clone()
    j = int(torch.nonzero(b.labels[0] != -100)[0])
    wrong[0, j - 1] = perfect[0, j - 1].roll(1)  # one wrong answer in the first sequence
    out = evaluate(FixedLogits([wrong]), [b], CPU, "fp32", task="mqar")
    assert out["val_accuracy"] == 63 / 64 and out["val_exact_match"] == 7 / 8
