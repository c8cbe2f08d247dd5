"""The LEAF benchmark's models (Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings"), as its reference
implementation defines them, written for fedsim.

- `FemnistCNN`: 28x28 grey characters, 62 classes. Two 5x5 "same" convolutions (32, 64 channels), each with ReLU
  and a 2x2 max-pool, a dense layer of 2048 and the head: 6,603,710 parameters.
- `CharLSTM`: Shakespeare next-character prediction. The 80 previous characters, each an index into LEAF's
  80-letter vocabulary (`VOCABULARY`), embedded in 8 dimensions, two LSTM layers of 256, and a head over the
  vocabulary applied to the last step's output: 819,920 parameters (PyTorch's LSTM has two bias vectors per gate
  where LEAF's TensorFlow cell has one: 817,872 there).
"""

from __future__ import annotations

import torch
from torch import nn

# LEAF's ALL_LETTERS (models/shakespeare/utils: letter_to_vec): every character the dataset holds
VOCABULARY = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQUENCE = 80  # characters of context per example


class FemnistCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), outputs: int = 62) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        c, h, w = input_shape
        self.features = nn.Sequential(nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * (h // 4) * (w // 4), 2048), nn.ReLU(), nn.Linear(2048, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, *self.input_shape)))


class CharLSTM(nn.Module):
    def __init__(self, outputs: int = len(VOCABULARY), embedding: int = 8, hidden: int = 256, layers: int = 2
                 ) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(VOCABULARY), embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))  # x: (batch, sequence) character indices (stored as numbers)
        return self.head(out[:, -1])
