"""Shared uniform negatives: one set of N items per BATCH, used by every row (cf. SSM neg_dist=1).

``sample`` returns ``LongTensor[1, N]``: N items i.i.d. uniform over the catalogue, with
replacement, positives not excluded (as the ``uniform`` sampler, but drawn once per batch).

How this changes the estimator.  With per-row sampling (``uniform``) the N negatives of different
rows are independent, so the batch loss ``mean_b l_b`` averages B*N independent draws.  Here every
row of a batch is scored against the SAME N items: the rows' negative terms are no longer
independent but positively correlated (one unlucky set of items, e.g. all easy or all very popular,
moves every row the same way), so the per-batch estimate and its gradient have a higher variance;
the effective number of distinct negatives per batch drops from B*N to N.  For a loss whose negative
term is a mean over negatives (CCL, MML, the margin losses) each row still sees N i.i.d. uniform
items, so the expectation over batches is unchanged; for a non-linear function of the negatives
(e.g. a log-sum-exp softmax) the bias of the N-sample estimate is the same as per-row sampling, only
the correlation across rows differs.  What is gained is cost: instead of gathering B*N item rows and
a batched [B, N] dot product, the encoder gathers and normalises N rows once and scores them with one
``[B, d] x [d, N]`` matmul (``mmlexp.encoders.cosine.cosine_gather_scores`` with ``[1, N]`` items), and the
backward scatters N rows instead of B*N.  Each batch draws a fresh set, so over an epoch every item
is still a negative for every kind of row.
"""

import scipy.sparse as sp
import torch

from mmlexp.samplers.base import NegativeSampler
from mmlexp.samplers.uniform import check_int


class SharedSampler(NegativeSampler):
    scores_model = False
    supports_graph_capture = True

    def item_draws(self, batch: int) -> int:
        """B positives and one set of N negatives for the batch."""
        return batch + self.num_negatives

    def __init__(
        self,
        num_negatives: int,
        n_items: int,
        train: sp.csr_matrix | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ):
        self.num_negatives = check_int("num_negatives", num_negatives, 1)
        self.n_items = check_int("n_items", n_items, 1)
        self.generator, self.device = generator, torch.device(device)

    def sample(self, users: torch.Tensor, pos_items: torch.Tensor | None = None, model=None) -> torch.Tensor:
        return torch.randint(self.n_items, (1, self.num_negatives), generator=self.generator, device=self.device)
