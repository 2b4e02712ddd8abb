//! Maximum-weight matching of a sparse bipartite graph: every one-to-one assignment of a layer
//! block. A refined run's blocks know only each anchor neuron's candidates (about 1 % of a
//! 3,072 × 3,072 block); a dense block is solved over a few per cent of its entries and priced
//! against the rest ([`Matching::improvement`], `results::assign`).
//!
//! A dense solver (`lsap`, as scipy's `linear_sum_assignment`) walks every column of the block
//! at each step of every augmenting path, known or not: 1–3 CPU-seconds per 3,072-neuron layer
//! pair. Here the same shortest augmenting path method (Crouse 2016, the algorithm of scipy and
//! `lsap`) walks only the graph's entries, with a binary heap in place of the scan for the
//! nearest column, and keeps the dual prices that prove its matching best.
//!
//! Each row may stay unmatched: it has a private zero-cost column of its own, so a complete
//! matching always exists and the solver never fails.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The known entries of a `[rows, cols]` weight matrix in compressed rows: row `i`'s entries
/// are `col[start[i]..start[i + 1]]` with weights `weight[..]` at the same places.
#[derive(Debug, Clone, Default)]
pub struct SparseRows {
    /// Columns in the matrix.
    pub cols: usize,
    /// Where each row's entries start; one more than the rows, ending at `col.len()`.
    pub start: Vec<usize>,
    /// Column of each entry.
    pub col: Vec<u32>,
    /// Weight of each entry.
    pub weight: Vec<f64>,
}

impl SparseRows {
    /// The entries of a row-major `[rows, cols]` matrix for which `weight` gives a value.
    pub fn from_dense<T: Copy>(
        values: &[T],
        rows: usize,
        cols: usize,
        weight: impl Fn(T) -> Option<f64>,
    ) -> Self {
        let mut out = Self {
            cols,
            start: Vec::with_capacity(rows + 1),
            ..Self::default()
        };
        out.start.push(0);
        for row in values.chunks_exact(cols.max(1)).take(rows) {
            for (j, &v) in row.iter().enumerate() {
                if let Some(w) = weight(v) {
                    out.col.push(j as u32);
                    out.weight.push(w);
                }
            }
            out.start.push(out.col.len());
        }
        out.start.resize(rows + 1, out.col.len());
        out
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.start.len().saturating_sub(1)
    }
}

/// A heap entry: a column and its path cost, nearest first (free columns first among equals,
/// as scipy prefers them).
#[derive(PartialEq)]
struct Near(f64, bool, usize);

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0)
            .then(self.1.cmp(&o.1))
            .then(o.2.cmp(&self.2))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

const NONE: usize = usize::MAX;

/// A maximum-weight matching and the dual prices that prove it: every known entry's weight is
/// at most `-(row_price[i] + col_price[j])`, with equality on the matching (a row's own column
/// of weight 0, where it stays unmatched, included). An entry the graph did not have whose
/// weight exceeds that bound could improve the matching; where no entry does, the matching is
/// the best over them too (linear-programming duality).
#[derive(Debug, Clone)]
pub struct Matching {
    /// Each row's column.
    pub partner: Vec<Option<usize>>,
    /// The rows' dual prices.
    row_price: Vec<f64>,
    /// The columns' dual prices.
    col_price: Vec<f64>,
}

impl Matching {
    /// By how much an entry at row `i`, column `j` of weight `w` exceeds its dual bound, where
    /// it does beyond rounding: an entry the graph did not have that could improve the matching.
    pub fn improvement(&self, i: usize, j: usize, w: f64) -> Option<f64> {
        let by = w + self.row_price[i] + self.col_price[j];
        (by > 1e-9).then_some(by)
    }
}

/// The matching of largest total weight among `m`'s known entries, each row and each column
/// used at most once, a row left unmatched adding nothing (so entries of negative weight are
/// never used).
pub fn max_weight_matching(m: &SparseRows) -> Matching {
    let rows = m.rows();
    // Columns: the matrix's, then one private column per row (cost 0: unmatched).
    let nc = m.cols + rows;
    let mut u = vec![0.0f64; rows];
    let mut v = vec![0.0f64; nc];
    let mut col4row = vec![NONE; rows];
    let mut row4col = vec![NONE; nc];
    let mut dist = vec![f64::INFINITY; nc];
    let mut path = vec![NONE; nc];
    let mut seen_col = vec![false; nc];
    let (mut touched, mut rows_seen, mut cols_seen) = (Vec::new(), Vec::new(), Vec::new());
    let mut heap = BinaryHeap::new();
    for cur in 0..rows {
        // Dijkstra from `cur` over reduced costs to the nearest free column.
        let (mut i, mut min_val) = (cur, 0.0f64);
        let sink = loop {
            rows_seen.push(i);
            let own = (m.cols + i, 0.0);
            let entries = (m.start[i]..m.start[i + 1]).map(|e| (m.col[e] as usize, -m.weight[e]));
            for (j, cost) in entries.chain(std::iter::once(own)) {
                if seen_col[j] {
                    continue;
                }
                let r = min_val + cost - u[i] - v[j];
                if r < dist[j] {
                    if dist[j] == f64::INFINITY {
                        touched.push(j);
                    }
                    dist[j] = r;
                    path[j] = i;
                    heap.push(Near(r, row4col[j] == NONE, j));
                }
            }
            // `cur`'s own column is free and in the heap until taken, so the heap holds a
            // column that is not yet seen.
            let j = loop {
                let Near(d, _, j) = heap.pop().expect("cur's own column is free");
                if !seen_col[j] && d == dist[j] {
                    break j;
                }
            };
            min_val = dist[j];
            seen_col[j] = true;
            cols_seen.push(j);
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };
        // Dual updates (Crouse's), then augment along the path.
        u[cur] += min_val;
        for &i in &rows_seen[1..] {
            u[i] += min_val - dist[col4row[i]];
        }
        for &j in &cols_seen {
            v[j] -= min_val - dist[j];
        }
        let mut j = sink;
        loop {
            let i = path[j];
            row4col[j] = i;
            std::mem::swap(&mut col4row[i], &mut j);
            if i == cur {
                break;
            }
        }
        for &j in &touched {
            dist[j] = f64::INFINITY;
        }
        for &j in &cols_seen {
            seen_col[j] = false;
        }
        touched.clear();
        rows_seen.clear();
        cols_seen.clear();
        heap.clear();
    }
    v.truncate(m.cols);
    Matching {
        partner: col4row
            .into_iter()
            .map(|j| (j < m.cols).then_some(j))
            .collect(),
        row_price: u,
        col_price: v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The best total by trying every partial injection of rows into columns.
    fn brute(m: &SparseRows) -> f64 {
        fn go(m: &SparseRows, used: &mut [bool], i: usize) -> f64 {
            if i == m.rows() {
                return 0.0;
            }
            let mut best = go(m, used, i + 1);
            for e in m.start[i]..m.start[i + 1] {
                let j = m.col[e] as usize;
                if !used[j] {
                    used[j] = true;
                    best = best.max(m.weight[e] + go(m, used, i + 1));
                    used[j] = false;
                }
            }
            best
        }
        go(m, &mut vec![false; m.cols], 0)
    }

    fn total(m: &SparseRows, got: &[Option<usize>]) -> f64 {
        let mut cols: Vec<usize> = got.iter().flatten().copied().collect();
        let n = cols.len();
        cols.sort_unstable();
        cols.dedup();
        assert_eq!(cols.len(), n, "a column twice in {got:?}");
        got.iter()
            .enumerate()
            .filter_map(|(i, j)| {
                let j = (*j)?;
                let e = (m.start[i]..m.start[i + 1])
                    .find(|&e| m.col[e] as usize == j)
                    .expect("matched on a known entry");
                Some(m.weight[e])
            })
            .sum()
    }

    #[test]
    fn the_matching_is_the_best_over_every_partial_injection() {
        let mut next = crate::results::tests::uniform(11);
        for (rows, cols) in [
            (1, 1),
            (4, 4),
            (6, 6),
            (3, 7),
            (7, 3),
            (5, 1),
            (1, 5),
            (6, 5),
        ] {
            for density in [0.0, 0.2, 0.5, 1.0] {
                for negative in [false, true] {
                    let dense: Vec<f64> = (0..rows * cols)
                        .map(|_| {
                            let w = next();
                            if next() < density {
                                if negative { 2.0 * w - 1.0 } else { w }
                            } else {
                                f64::NAN
                            }
                        })
                        .collect();
                    let m =
                        SparseRows::from_dense(&dense, rows, cols, |w| (!w.is_nan()).then_some(w));
                    let got = max_weight_matching(&m).partner;
                    assert_eq!(got.len(), rows);
                    let (t, b) = (total(&m, &got), brute(&m));
                    assert!(
                        (t - b).abs() < 1e-12,
                        "{rows} x {cols}, density {density}: {t} vs {b} ({got:?})"
                    );
                }
            }
        }
    }
}
