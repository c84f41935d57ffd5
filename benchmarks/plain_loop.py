"""The baseline: a plain eager PyTorch loop of the same model, loss and sampler, written the usual way.

nn.Embedding tables, a DataLoader over (user, item) pairs with shuffling, negatives drawn per batch,
MML on cosine scores, (l2/2)*||E||^2 added to the loss, clip_grad_norm_, Adam, ``loss.item()`` each step.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmlexp.losses import MultiMarginLoss


class PlainMF(nn.Module):
    def __init__(self, n_users, n_items, dim=64, dropout=0.1):
        super().__init__()
        self.users, self.items = nn.Embedding(n_users, dim), nn.Embedding(n_items, dim)
        nn.init.normal_(self.users.weight, std=1e-4)
        nn.init.normal_(self.items.weight, std=1e-4)
        self.dropout = nn.Dropout(dropout)

    def forward(self, u, i):
        user = self.dropout(F.normalize(self.users(u), dim=-1))
        item = F.normalize(self.items(i), dim=-1)
        return torch.bmm(item, user.unsqueeze(-1)).squeeze(-1)


def plain_training(
    users, items, n_users, n_items, num_negatives, batch_size, max_steps, l2=1e-8, lr=1e-4, device="cpu"
):
    """Run ``max_steps`` steps; returns the number of interactions processed."""
    model = PlainMF(n_users, n_items).to(device)
    loss_fn = MultiMarginLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(users, items), batch_size=batch_size, shuffle=True)
    seen = 0
    for step, (u, i) in enumerate(loader):
        if step >= max_steps:
            break
        u, i = u.to(device), i.to(device)
        neg = torch.randint(n_items, (u.shape[0], num_negatives), device=device)
        scores = model(u, torch.cat([i.unsqueeze(1), neg], dim=1))
        loss = loss_fn(scores) + l2 / 2 * (model.users.weight.pow(2).sum() + model.items.weight.pow(2).sum())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        _ = loss.item()
        seen += u.shape[0]
    return seen
