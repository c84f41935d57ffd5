"""What the trainer reads from a sampler besides ``sample``: its declared capabilities.

A sampler says what it does instead of the trainer keeping a list of sampler classes.  The defaults here
are the safe ones, which a sampler of one's own gets without declaring anything (inheriting from
``NegativeSampler`` or not: the readers fall back to the same values):

  scores_model            True: ``sample`` may read the model's rows, so TableAdam keeps every row current
                          (no deferred rows, ``mmlexp.optim.deferred_rows``); False where it never looks at the model
  supports_graph_capture  False: the step stays eager (``mmlexp.graphed_step``); True where ``sample`` draws
                          on the device with fixed shapes (checked under CUDA graph capture)
  graph_capture_note      why not, for the log line
  item_draws(B)           item rows one step reads, repeats counted: B positives + B x N negatives per row
                          (what ``trainer.defer_rows=auto`` weighs; a shared draw reads B + N)
"""

SCORES_MODEL = True
SUPPORTS_GRAPH_CAPTURE = False
GRAPH_CAPTURE_NOTE = "is not known to be capturable"


class NegativeSampler:
    scores_model: bool = SCORES_MODEL
    supports_graph_capture: bool = SUPPORTS_GRAPH_CAPTURE
    graph_capture_note: str = GRAPH_CAPTURE_NOTE
    num_negatives: int = 0

    def item_draws(self, batch: int) -> int:
        """Item rows one step reads, repeats counted: the B positives and N negatives per row."""
        return batch * (1 + self.num_negatives)
