"""The trainer's optimisers and their numba kernels.

table_adam   TableAdam       the default: the paper's dense Adam, L2 and clip folded into one update
deferred     DeferredTable   TableAdam's untouched rows deferred and replayed exactly
lazy_adam    LazyAdam        trainer.optimizer=sparse_adam: touched rows only (not the paper's semantics)
kernels      adam_row        the one Adam row update (numba) every path above runs
sparse_rows                  row-sparse gradients as the kernels read them
choose       make_optimizer, choose_deferred_rows: trainer.optimizer and trainer.defer_rows
"""

from mmlexp.optim.choose import OPTIMIZERS, choose_deferred_rows, make_optimizer
from mmlexp.optim.deferred_rows import rows_read
from mmlexp.optim.lazy_adam import LazyAdam, touched_rows
from mmlexp.optim.sparse_rows import coalesced, takes_sparse_grads
from mmlexp.optim.table_adam import TableAdam

__all__ = [
    "OPTIMIZERS",
    "LazyAdam",
    "TableAdam",
    "choose_deferred_rows",
    "coalesced",
    "make_optimizer",
    "rows_read",
    "takes_sparse_grads",
    "touched_rows",
]
