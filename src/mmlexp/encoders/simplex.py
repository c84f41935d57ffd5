"""SimpleX (Mao et al., CIKM'21; RecZoo src/SimpleX.py; paper-reference §4).

    p_u = g * e_u + (1 - g) * W_v( agg(h_1..h_L) )      W_v: d x d, no bias, after the aggregation
    u   = dropout(normalize(p_u))  (net_dropout, training only)  ,  v = normalize(Q[item])  ,  s = <u, v>

History h_1..h_L: embeddings of the user's train items (``train`` CSR), from the item table
(``share_history_table=True``, the Yelp setting) or from a separate history-item table (False, the
Gowalla setting; with it and user_attention the parameter count on Gowalla is 7,164,736 = the
logged 7,164,992 minus RecZoo's 4 OOV/padding rows).  Aggregators (paper-reference §4):

    mean             h = sum_l h_l / (L + 1e-9)                                (pads excluded)
    user_attention   k_l = tanh(W_k h_l + b_k), a_l = <k_l, e_u>, alpha = masked softmax(a), h = sum alpha_l h_l
    self_attention   as user_attention with a_l = <k_l, q>, q a learned d x 1 vector (Xavier-normal)

Masked softmax: a proper mask by default (pads take no weight).  ``pad_in_softmax_quirk=True``
reproduces the reference: every pad adds exp(0) = 1 to the denominator,
alpha_l = exp(a_l) / (sum_real exp(a) + #pads + 1e-9), where #pads = pad_length - #real and
pad_length is the reference's padded length: ``max_history`` when set, else the longest train
history (the reference pads Gowalla to the longest sequence; which sequences set that length is
not recorded, LOW confidence).  Computed in a shifted, overflow-free form; exact otherwise.
``attention_dropout`` (0 in every reference config) drops attention weights in training.

History order and cap: LightGCN files list each user's items in ascending id order (checked on
Gowalla and Yelp2018: every line sorted), and the loader's CSR is sorted the same way, so CSR order
IS the file order; "the last ``max_history`` items" are the highest columns of the user's row
(pre-truncation, as the reference's Keras-style tokeniser).  ``max_history=None``: no cap.
Leave-target-out (``forward``, i.e. training rows (u, i)): the history is u's train items except i,
truncated to the last ``max_history`` of THOSE (as the reference builds it: a window of the last
cap+1 items, the target masked out, the oldest dropped if cap+1 remain).  Eval users (``score``,
``all_embeddings``): all train items, the last ``max_history``.

Implementation: histories are packed (no padding, vectorised from the CSR arrays, no Python loop over
users); segment sums / segment softmax with ``torch.segment_reduce`` (graph.segment_sum & co).  Memory per batch is
(sum of the batch's history lengths) x d rather than B x (longest history) x d.
Init: tables Normal(0, init_std) as MF; W_v, W_k Xavier-normal, b_k = 0 (paper-reference §3).
``gamma=1`` skips the history path (p_u = e_u: MF with the SimpleX dropout), as the Yelp setting.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmlexp.encoders._scoring import check_dropout, check_train, eval_scores, finish, pair_scores
from mmlexp.encoders.base import EmbeddingEncoder
from mmlexp.encoders.graph import row_entries, segment_expand, segment_max, segment_sum

AGGREGATORS = ("mean", "user_attention", "self_attention")


class SimpleX(EmbeddingEncoder):
    graph_capture_note = "reads each user's history: shapes depend on the batch (graph.row_entries)"
    # buffers (register_buffer) and the layers only some aggregators have
    indptr: torch.Tensor
    indices: torch.Tensor
    w_k: nn.Linear | None
    query: nn.Parameter | None

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        aggregator: str = "user_attention",
        gamma: float = 0.8,
        net_dropout: float = 0.1,
        max_history: int | None = None,
        share_history_table: bool = False,
        pad_in_softmax_quirk: bool = False,
        attention_dropout: float = 0.0,
        init_std: float = 1e-4,
        similarity: str = "cosine",
        eval_chunk_users: int = 2048,
        train=None,
    ):
        super().__init__(n_users, n_items, dim, init_std, similarity)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator={aggregator!r}: must be one of {', '.join(AGGREGATORS)}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma}: must be a number in [0, 1] (1 = user embedding only)")
        if max_history is not None and (
            isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1
        ):
            raise ValueError(f"max_history={max_history}: must be null (no cap) or an integer >= 1")
        for name, flag in (
            ("share_history_table", share_history_table),
            ("pad_in_softmax_quirk", pad_in_softmax_quirk),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}={flag}: must be true or false")
        if isinstance(eval_chunk_users, bool) or not isinstance(eval_chunk_users, int) or eval_chunk_users < 1:
            raise ValueError(f"eval_chunk_users={eval_chunk_users}: must be an integer >= 1")
        self.net_dropout = check_dropout("net_dropout", net_dropout)
        self.attention_dropout = check_dropout("attention_dropout", attention_dropout)
        train = check_train(train, n_users, n_items, "SimpleX's user histories")
        self.aggregator, self.gamma, self.max_history = aggregator, float(gamma), max_history
        self.share_history_table, self.pad_in_softmax_quirk = share_history_table, pad_in_softmax_quirk
        self.eval_chunk_users = eval_chunk_users

        dim = self.dim
        self.history_table = None if share_history_table else nn.Parameter(torch.randn(n_items, dim) * init_std)
        self.w_v = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_normal_(self.w_v.weight)
        self.w_k = self.query = None
        if aggregator != "mean":
            self.w_k = nn.Linear(dim, dim)
            nn.init.xavier_normal_(self.w_k.weight)
            nn.init.zeros_(self.w_k.bias)
        if aggregator == "self_attention":
            self.query = nn.Parameter(nn.init.xavier_normal_(torch.empty(dim, 1)))

        counts = np.diff(train.indptr)
        longest = int(counts.max()) if counts.size else 0
        self.pad_length = max_history if max_history is not None else longest
        self.register_buffer("indptr", torch.from_numpy(train.indptr.astype(np.int64)), persistent=False)
        self.register_buffer("indices", torch.from_numpy(train.indices.astype(np.int64)), persistent=False)

    def embedding_tables(self) -> list[nn.Parameter]:
        tables = super().embedding_tables()
        return tables if self.history_table is None else tables + [self.history_table]

    # ------------------------------------------------------------------ history
    def history(
        self, users: torch.Tensor, pos_items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed histories: ``(seg [T], ids [T], counts [B])``; entry t is item ``ids[t]`` of row ``seg[t]``.

        With ``pos_items`` (training rows) the row's positive is left out (leave-target-out) and the cap
        applies to the remaining items; without, a user's whole (capped) train history."""
        cap = self.max_history
        take = None
        if cap is not None:
            take = torch.full_like(users, cap + (pos_items is not None))
        seg, pos, offset, _ = row_entries(self.indptr, users, take)
        ids = self.indices[pos]
        if pos_items is not None:
            keep = ids != pos_items[seg]
            if cap is not None:
                # a window of cap+1 items without the target: drop its oldest (the reference keeps the
                # last cap items of the history with the target already removed)
                over = torch.bincount(seg[keep], minlength=users.numel()) > cap
                keep &= ~(over[seg] & (offset == 0))
            seg, ids = seg[keep], ids[keep]
        return seg, ids, torch.bincount(seg, minlength=users.numel())

    def aggregate(
        self, user_emb: torch.Tensor, seg: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor, training: bool
    ) -> torch.Tensor:
        """agg(history) ``[B, d]`` (before W_v); rows with an empty history give 0."""
        table = self.item_table if self.history_table is None else self.history_table
        h = F.embedding(ids, table)  # [T, d] (fast sparse backward)
        if self.aggregator == "mean":
            return segment_sum(h, seg, counts) / (counts.to(h.dtype) + 1e-9).unsqueeze(1)
        assert self.w_k is not None  # every aggregator but mean has its key layer
        keys = torch.tanh(self.w_k(h))
        if self.aggregator == "user_attention":
            logits = (keys * segment_expand(user_emb, seg, counts)).sum(-1)
        else:
            assert self.query is not None  # self_attention's global query
            logits = (keys @ self.query).squeeze(-1)
        # segment softmax shifted by the segment max (no gradient needed: the softmax is shift-invariant)
        shift = segment_max(logits, counts)
        shift = shift.clamp_min(0) if self.pad_in_softmax_quirk else torch.where(shift.isfinite(), shift, 0)
        weights = torch.exp(logits - shift.index_select(0, seg))
        denom = segment_sum(weights, seg, counts)
        if self.pad_in_softmax_quirk:  # exp(0 - shift) per pad, + the reference's 1e-9
            pads = (self.pad_length - counts).clamp_min(0).to(h.dtype)
            denom = denom + (pads + 1e-9) * torch.exp(-shift)
        alpha = weights / segment_expand(denom, seg, counts)
        alpha = F.dropout(alpha, self.attention_dropout, training=training)
        return segment_sum(alpha.unsqueeze(1) * h, seg, counts)

    # ------------------------------------------------------------------ towers
    def raw_user_vectors(self, users: torch.Tensor, pos_items: torch.Tensor | None, training: bool) -> torch.Tensor:
        """p_u ``[B, d]`` before normalisation and dropout."""
        user_emb = self.user_table[users]
        if self.gamma == 1.0:
            return user_emb
        agg = self.aggregate(user_emb, *self.history(users, pos_items), training=training)
        return self.gamma * user_emb + (1.0 - self.gamma) * self.w_v(agg)

    def forward(self, users: torch.Tensor, pos_items: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Score matrix ``[B, 1+N]`` of training rows (leave-target-out histories; column 0 the positive;
        ``negatives`` ``[B, N]`` or shared ``[1, N]``); dropout when the module is in training mode."""
        p = self.raw_user_vectors(users, pos_items, self.training)
        u = F.dropout(finish(p, self.similarity), self.net_dropout, training=self.training)
        return pair_scores(u, self.item_table, pos_items, negatives, self.similarity)

    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Eval-mode scores ``[B, C]``: full (capped) histories, no dropout whatever the module's mode."""
        u = finish(self.raw_user_vectors(users, None, False), self.similarity)
        return eval_scores(u, self.item_table, items, self.similarity)

    @torch.no_grad()
    def all_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode user vectors (full histories, in chunks of ``eval_chunk_users``) and item vectors."""
        users = torch.arange(self.n_users, device=self.indptr.device)
        user_vecs = (
            torch.cat([self.raw_user_vectors(chunk, None, False) for chunk in users.split(self.eval_chunk_users)])
            if self.n_users
            else self.user_table.detach().clone()
        )
        return finish(user_vecs, self.similarity), finish(self.item_table, self.similarity)
