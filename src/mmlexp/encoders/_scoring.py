"""The one scoring path of every encoder: cosine (default) or dot product, plus the shared checks.

``similarity="cosine"``: the user vector is L2-normalised (then dropped out in training, RecZoo
style), item rows are normalised as they are gathered (``encoders.cosine.cosine_gather_scores``);
``all_embeddings`` returns both sides normalised, so full ranking by dot product ranks by cosine.
``similarity="dot"``: nothing is normalised; ``dot_gather_scores`` is the plain-autograd gather+dot.
"""

import torch
import torch.nn.functional as F

from mmlexp.encoders.cosine import cosine_gather_scores

SIMILARITIES = ("cosine", "dot")


def check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r}: must be one of {', '.join(SIMILARITIES)}")
    return similarity


def check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim={dim}: must be an integer >= 1")
    return dim


def check_dropout(name: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name}={p}: must lie in [0, 1)")
    return float(p)


def check_init_std(init_std) -> float:
    if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0:
        raise ValueError(f"init_std={init_std}: must be > 0")
    return float(init_std)


def check_train(train, n_users: int, n_items: int, who: str):
    """``train`` must be the users x items training matrix (scipy sparse); returned as canonical CSR."""
    if train is None:
        raise ValueError(
            f"train=None: must be the training interactions (scipy CSR, users x items); "
            f"{who} is built from them (the runner passes train=data.train)"
        )
    if not hasattr(train, "tocsr") or tuple(train.shape) != (n_users, n_items):
        shape = getattr(train, "shape", type(train).__name__)
        raise ValueError(
            f"train.shape={shape}: must be a scipy sparse matrix of shape (n_users, n_items) = ({n_users}, {n_items})"
        )
    train = train.tocsr(copy=True)
    train.sum_duplicates()
    train.sort_indices()
    return train


def dot_gather_scores(user_vecs: torch.Tensor, table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Scores ``[B, C]``: ``<user_vecs[b], table[items[b, c]]>``; ``items`` ``[B, C]`` or ``[1, C]`` (shared)."""
    if items.shape[0] == 1 and user_vecs.shape[0] != 1:
        return user_vecs @ table.index_select(0, items[0]).T
    rows = table.index_select(0, items.reshape(-1)).view(*items.shape, -1)
    return torch.bmm(rows, user_vecs.unsqueeze(-1)).squeeze(-1)


def gather_scores(
    user_vecs: torch.Tensor, table: torch.Tensor, items: torch.Tensor, similarity: str, sparse_grad: bool = False
) -> torch.Tensor:
    """``user_vecs`` already finished (normalised when cosine); ``table`` the raw item matrix.
    ``sparse_grad``: the table's gradient as sparse rows (cosine path; see ``cosine_gather_scores``)."""
    if similarity == "cosine":
        return cosine_gather_scores(user_vecs, table, items, sparse_grad=sparse_grad)
    return dot_gather_scores(user_vecs, table, items)


def finish(vecs: torch.Tensor, similarity: str) -> torch.Tensor:
    """Normalise (cosine) or leave as is (dot)."""
    return F.normalize(vecs, dim=-1) if similarity == "cosine" else vecs


def pair_scores(
    user_vecs: torch.Tensor,
    table: torch.Tensor,
    pos_items: torch.Tensor,
    negatives: torch.Tensor,
    similarity: str,
    sparse_grad: bool = False,
) -> torch.Tensor:
    """The training score matrix ``[B, 1+N]``: column 0 the positive, then the negatives.
    Per-row negatives are scored in one gather with their positive; shared ``[1, N]`` ones by a matmul."""
    if negatives.shape[0] == pos_items.shape[0]:
        return gather_scores(
            user_vecs, table, torch.cat([pos_items.unsqueeze(1), negatives], dim=1), similarity, sparse_grad
        )
    pos = gather_scores(user_vecs, table, pos_items.unsqueeze(1), similarity)
    return torch.cat([pos, gather_scores(user_vecs, table, negatives, similarity)], dim=1)


def eval_scores(user_vecs: torch.Tensor, table: torch.Tensor, items: torch.Tensor, similarity: str) -> torch.Tensor:
    """Eval scores ``[B, C]``; large candidate sets (B*C > n_items) score the whole catalogue once."""
    if items.numel() > table.shape[0]:
        return (user_vecs @ finish(table, similarity).T).gather(1, items.expand(user_vecs.shape[0], -1))
    return gather_scores(user_vecs, table, items, similarity)
