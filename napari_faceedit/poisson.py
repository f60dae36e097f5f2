"""Gradient-domain solves on the pixel grid (Pérez, Gangnet and Blake, "Poisson image editing", 2003):
the sparse 4-neighbour Laplacian systems behind the classical synthesis blend and its harmonic fills."""
from __future__ import annotations

import numpy as np


def grid_edges(unknown: np.ndarray, domain: np.ndarray):
    """The pixels of ``unknown`` (rows, cols, and an index map: -1 elsewhere) and, per direction, their
    4-neighbour edges that stay inside ``domain``: (edge's pixel number, neighbour row, neighbour col)."""
    index = np.full(unknown.shape, -1, dtype=np.int64)
    index[unknown] = np.arange(int(unknown.sum()))
    rows, cols = np.nonzero(unknown)
    height, width = unknown.shape
    edges = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        inside[inside] = domain[r[inside], c[inside]]
        edges.append((np.nonzero(inside)[0], r[inside], c[inside]))
    return rows, cols, index, edges


def solve_on_grid(index: np.ndarray, edges, rhs: np.ndarray, extra_diagonal: np.ndarray) -> np.ndarray:
    """Solve (L + diag(extra_diagonal)) x = rhs, L the graph Laplacian of ``edges`` (from ``grid_edges``);
    ``rhs`` must already hold the guidance and the values of neighbours that are not unknowns."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    n = len(rhs)
    diagonal = np.asarray(extra_diagonal, dtype=np.float64).copy()
    entries_i, entries_j = [], []
    for me, neighbour_rows, neighbour_cols in edges:
        diagonal[me] += 1.0  # each pixel has at most one edge per direction
        neighbour = index[neighbour_rows, neighbour_cols]
        entries_i.append(me[neighbour >= 0])
        entries_j.append(neighbour[neighbour >= 0])
    i, j = np.concatenate(entries_i), np.concatenate(entries_j)
    matrix = sparse.csc_matrix(
        (np.concatenate([diagonal, -np.ones(len(i))]), (np.concatenate([np.arange(n), i]), np.concatenate([np.arange(n), j]))),
        shape=(n, n),
    )
    return splu(matrix).solve(rhs)
