"""One way to call a model on any batch form, and the layers whose outputs the user reads."""

from __future__ import annotations

import torch
from torch import nn

from modelshrink.inputs import call, output_matrix, resized, signature, zeros
from modelshrink.stages.selection import output_layers
from tests.data.own import ImageAndVector, TokensAndMask


def test_dict_tuple_and_tensor_batches_call_resize_and_rebuild() -> None:
    batch = {"input_ids": torch.randint(0, 40, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    assert call(TokensAndMask(), batch).shape == (3, 4)
    bigger = resized(batch, 7)
    assert bigger["input_ids"].shape == (7, 12) and torch.equal(bigger["input_ids"][3:6], batch["input_ids"])
    again = zeros(signature(batch), 2)
    assert again["input_ids"].shape == (2, 12) and again["attention_mask"].dtype == torch.long

    pair = (torch.randn(2, 3, 8, 8), torch.randn(2, 4))
    assert call(ImageAndVector(), pair).shape == (2, 3)
    assert [x.shape for x in zeros(signature(pair), 5)] == [(5, 3, 8, 8), (5, 4)]
    assert zeros(signature(torch.randn(2, 6)), 1).shape == (1, 6)


def test_output_matrix_joins_every_output_per_sample() -> None:
    out = {"boxes": torch.ones(2, 4), "scores": torch.zeros(2, 1), "meta": (torch.ones(2, 2, 2),)}
    assert output_matrix(out).shape == (2, 4 + 1 + 4)


class TwoHeadsAndASkip(nn.Module):
    """A score map whose channels come from a conv and a skip conv; a box head; a hidden layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.hidden = nn.Conv2d(8, 8, 3, padding=1)
        self.skip = nn.Conv2d(8, 2, 1)
        self.scores = nn.Conv2d(8, 2, 1)
        self.boxes = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.hidden(torch.relu(self.stem(x))))
        score_map = self.scores(features) + self.skip(features)
        return score_map.sigmoid(), self.boxes(features.mean((2, 3)))


def test_output_layers_are_the_ones_whose_channels_reach_an_output() -> None:
    model = TwoHeadsAndASkip()
    model.requires_grad_(False)  # frozen weights: the walk still sees the graph
    found = output_layers(model, torch.randn(1, 3, 8, 8), (nn.Conv2d, nn.Linear))
    assert found == {"scores", "skip", "boxes"}
    assert all(not p.requires_grad for p in model.parameters()), "the model's frozen state is restored"
