"""A 4-user x 5-item graph (item 3 has no interactions) shared by the graph-encoder tests."""

import numpy as np
import scipy.sparse as sp
import torch

TRAIN = sp.csr_matrix(np.array([[1, 1, 0, 0, 1], [0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 0, 1, 0, 1]], dtype=np.float32))
USERS, POS = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 2, 4, 4])
NEG = torch.tensor([[3, 1], [0, 0], [4, 3], [1, 2], [2, 3]])


def dense_adjacency() -> torch.Tensor:
    r = torch.from_numpy(TRAIN.toarray())
    a = torch.zeros(9, 9)
    a[:4, 4:], a[4:, :4] = r, r.T
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return inv[:, None] * a * inv[None, :]
