"""Draw mmlexp's import graph between its top-level modules and packages: docs/import-graph.svg (`make import-graph`).

Nodes are `mmlexp.<name>` (a package counts as one node); an arrow A -> B means some module of A imports B. Rows
are the layers of the import-linter contract in pyproject.toml (top layer on top), which `make lint` checks: every
arrow points down or stays within a row whose modules may import each other. Reads the source with
grimp (import-linter's graph library); nothing is imported or run.
"""

import argparse
from pathlib import Path

import grimp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def top_level_graph(package: str = "mmlexp") -> nx.DiGraph:
    """Module-level imports of ``package`` collapsed onto its direct children (``mmlexp.optim.kernels`` ->
    ``optim``), edges weighted by how many module pairs import across them."""
    graph = grimp.build_graph(package)
    top = lambda m: m.split(".")[1] if m.count(".") >= 1 else m  # noqa: E731
    out = nx.DiGraph()
    for module in graph.modules:
        if module != package:
            out.add_node(top(module))
        for imported in graph.find_modules_directly_imported_by(module):
            if module == package or imported == package:
                continue
            a, b = top(module), top(imported)
            if a != b:
                w = out.get_edge_data(a, b, {"weight": 0})["weight"]
                out.add_edge(a, b, weight=w + 1)
    return out


def contract_layers() -> list[list[str]]:
    """The layers of pyproject's import-linter contract, top first, as top-level names (``mmlexp.run`` -> ``run``)."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (spec,) = [c["layers"] for c in config if c["type"] == "layers"]
    return [[m.strip().split(".", 1)[1] for m in row.replace("|", ":").split(":")] for row in spec]


def layers(g: nx.DiGraph) -> dict[str, int]:
    """Row of each node: its layer in the contract (the bottom layer is row 0); a node the contract does not name
    sits one row above the highest it imports."""
    rows = contract_layers()
    level = {name: len(rows) - 1 - i for i, row in enumerate(rows) for name in row}
    order = list(nx.topological_sort(g)) if nx.is_directed_acyclic_graph(g) else list(g.nodes)
    for node in reversed(order):
        if node not in level:
            level[node] = 1 + max((level.get(s, 0) for s in g.successors(node)), default=-1)
    return {n: level[n] for n in g.nodes}


def draw(g: nx.DiGraph, path: Path) -> None:
    level = layers(g)
    rows: dict[int, list[str]] = {}
    for node in sorted(g.nodes):
        rows.setdefault(level[node], []).append(node)
    pos = {n: (i - (len(row) - 1) / 2, lvl) for lvl, row in rows.items() for i, n in enumerate(row)}
    width = max(len(r) for r in rows.values())
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * width), 1.2 * (len(rows) + 1)))
    cyclic = not nx.is_directed_acyclic_graph(g)
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=8, edge_color="#9aa5b1", width=0.8,
                           connectionstyle="arc3,rad=0.08", node_size=1800)  # fmt: skip
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#dce6f2", edgecolors="#4a6785", node_size=1800, node_shape="s")
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    ax.set_title(
        "mmlexp: what imports what (arrows point down to what is imported)" + ("  [CYCLE PRESENT]" if cyclic else ""),
        fontsize=9,
    )
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "import-graph.svg")
    args = p.parse_args(argv)
    g = top_level_graph()
    draw(g, args.out)
    n_layers = max(layers(g).values()) + 1
    print(f"{args.out}: {g.number_of_nodes()} modules, {g.number_of_edges()} import edges, {n_layers} layers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
