"""Full-ranking evaluation on Gowalla: ``evaluate_embeddings`` against a straightforward baseline.

Gowalla (29,858 users x 40,981 items, 810,128 train / 217,242 test), d = 64, random N(0, 1)
embeddings normalised to unit length, fp32, K = 20 and 50 (one top-50 ranking).

* fast:  ``mmlexp.evaluation.evaluate_embeddings`` (method "auto": on CPU the bf16 pre-filter with
  exact fp32 re-scoring where oneDNN has bf16, else the exact block-max selection);
* naive: chunks of 1024 users, dense fp32 scores ``u @ V.T`` (torch), train items set to -inf
  through the CSR, numpy ``argpartition`` + ``argsort`` of the top 50, hits from a dense test chunk.

After a warm-up of each, the two are timed in interleaved rounds (fast, naive, fast, naive, ...) so
that load from other processes hits both alike; the median (and min) over rounds is printed, with
the ratio. Both must give the same metrics (checked). Peak RSS is read after the fast runs (before
any naive run) and at the end. ``--methods`` also times ``rank_top_k`` alone with each method, and
with torch's intra-op threads instead of one worker thread per chunk.

    python benchmarks/bench_evaluation.py [--rounds 3] [--methods] [--threads N]

Data from $MMLEXP_DATA_DIR (default <repo>/../shared/data)/gowalla/{train,test}.txt, through
``mmlexp.data.load_dataset`` when it imports, else a local parser.
"""

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from mmlexp.evaluation import LongTail, evaluate_embeddings, rank_top_k

REPO = Path(__file__).resolve().parents[1]
KS = (20, 50)


def data_dir() -> Path:
    return Path(os.environ.get("MMLEXP_DATA_DIR") or REPO.parent / "shared" / "data")


def parse_lightgcn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    users, items = [], []
    with open(path) as f:
        for line in f:
            ids = line.split()
            if len(ids) > 1:
                users.extend([int(ids[0])] * (len(ids) - 1))
                items.extend(int(i) for i in ids[1:])
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)


def load_gowalla() -> tuple[sp.csr_matrix, sp.csr_matrix, str]:
    try:
        from mmlexp.data import load_dataset

        os.environ.setdefault("MMLEXP_DATA_DIR", str(data_dir()))
        os.environ.setdefault("MMLEXP_CACHE_DIR", "/tmp/mmlexp-cache")
        data = load_dataset("gowalla", download=False)
        return data.train, data.test, "mmlexp.data.load_dataset"
    except Exception as e:  # the data module may be absent or broken while being written
        print(f"(mmlexp.data unusable: {type(e).__name__}: {e}; parsing the text files)")
    folder = data_dir() / "gowalla"
    (tu, ti), (su, si) = parse_lightgcn(folder / "train.txt"), parse_lightgcn(folder / "test.txt")
    shape = (int(max(tu.max(), su.max())) + 1, int(max(ti.max(), si.max())) + 1)

    def build(u, i):
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=shape)
        m.sum_duplicates()
        m.data[:] = 1
        return m

    return build(tu, ti), build(su, si), str(folder)


def naive_evaluate(user_emb, item_emb, train, test, ks, chunk=1024):
    """Dense scores per chunk + numpy argpartition; metrics straight from the formulas."""
    k_max = max(ks)
    n_test = np.diff(test.indptr)
    users = np.flatnonzero(n_test)
    disc = 1.0 / np.log2(np.arange(2, k_max + 2))
    idcg = np.cumsum(disc)
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "precision", "hit")}
    items_t = item_emb.T.contiguous()
    for s in range(0, len(users), chunk):
        us = users[s : s + chunk]
        scores = (user_emb[torch.from_numpy(us)] @ items_t).numpy()
        tr = train[us]
        scores[np.repeat(np.arange(len(us)), np.diff(tr.indptr)), tr.indices] = -np.inf
        part = np.argpartition(-scores, k_max - 1, axis=1)[:, :k_max]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        hits = np.take_along_axis(test[us].toarray() != 0, top, axis=1).astype(np.float64)
        nt = n_test[us]
        for k in ks:
            nh = hits[:, :k].sum(1)
            sums[f"recall@{k}"] += (nh / nt).sum()
            sums[f"ndcg@{k}"] += ((hits[:, :k] * disc[:k]).sum(1) / idcg[np.minimum(k, nt) - 1]).sum()
            sums[f"precision@{k}"] += (nh / k).sum()
            sums[f"hit@{k}"] += (nh > 0).sum()
    return {key: float(v / len(users)) for key, v in sums.items()}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    ap.add_argument("--methods", action="store_true", help="also time rank_top_k per method")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--chunk-size", type=int, default=None, help="evaluate_embeddings chunk_size")
    ap.add_argument(
        "--no-longtail",
        action="store_true",
        help="leave out the long-tail metrics (on by default, as in a training run)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_load, (train, test, source) = timed(load_gowalla)
    n_users, n_items = train.shape
    print(
        f"Gowalla from {source}: {n_users} users x {n_items} items, train {train.nnz}, test {test.nnz} ({t_load:.1f} s)"
    )
    g = torch.Generator().manual_seed(0)
    user_emb = torch.nn.functional.normalize(torch.randn(n_users, 64, generator=g), dim=1)
    item_emb = torch.nn.functional.normalize(torch.randn(n_items, 64, generator=g), dim=1)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu count {os.cpu_count()}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )

    longtail = None if args.no_longtail else LongTail.from_train(train)

    def fast():
        return evaluate_embeddings(
            user_emb, item_emb, train, test, ks=KS, chunk_size=args.chunk_size, longtail=longtail
        )

    def naive():
        return naive_evaluate(user_emb, item_emb, train, test, KS)

    fast()  # warm-up
    t_fast = [timed(fast)[0] for _ in range(args.rounds)]
    rss_fast = peak_rss_mib()
    naive_res = naive()  # warm-up
    fast_res = fast()
    t_naive = []
    for _ in range(args.rounds):
        t_naive.append(timed(naive)[0])
        t_fast.append(timed(fast)[0])
    diff = max(abs(fast_res[k] - naive_res[k]) for k in naive_res)  # the naive one has no long-tail metrics
    print(f"metrics: {', '.join(f'{k}={v:.5f}' for k, v in fast_res.items())}")
    print(f"max |fast - naive| over metrics: {diff:.2e}" + ("" if diff < 1e-6 else "  <-- MISMATCH"))
    med_f, med_n = statistics.median(t_fast), statistics.median(t_naive)
    print(f"evaluate_embeddings: median {med_f:.3f} s  min {min(t_fast):.3f} s  ({len(t_fast)} runs)")
    print(f"naive baseline     : median {med_n:.3f} s  min {min(t_naive):.3f} s  ({len(t_naive)} runs)")
    print(f"speed-up (median)  : {med_n / med_f:.2f}x   (min/min: {min(t_naive) / min(t_fast):.2f}x)")
    print(f"peak RSS: {rss_fast:.0f} MiB after the fast runs, {peak_rss_mib():.0f} MiB after the naive ones")

    if args.methods:
        from mmlexp.evaluation import ranking

        def rank(method):
            return lambda: rank_top_k(user_emb, item_emb, train, max(KS), method=method)

        print(f"rank_top_k alone (top-{max(KS)}), median / min of {args.rounds} after a warm-up:")
        for label, method, chunk_threads in [
            ("bf16", "bf16", True),
            ("blocked", "blocked", True),
            ("topk", "topk", True),
            ("bf16, intra-op threads", "bf16", False),
            ("topk, intra-op threads", "topk", False),
        ]:
            ranking._CHUNK_THREADS = chunk_threads
            rank(method)()
            ts = [timed(rank(method))[0] for _ in range(args.rounds)]
            print(f"  {label:24s}: {statistics.median(ts):.3f} s / {min(ts):.3f} s")
        ranking._CHUNK_THREADS = True
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
