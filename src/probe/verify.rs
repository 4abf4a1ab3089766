//! The commitment, the checks drawn after it, the answers, and their verification.

use crate::commitment::merkle::{self, Hash};

use super::matrices::{Matrix, Spec, generate, keys, multiply, word};

/// One round of checks on one tile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    pub tile: u32,
    /// Freivalds' vector r, one 0/1 entry per column.
    pub vector: Vec<u8>,
    /// Rows of C_t to open, distinct, ascending.
    pub rows: Vec<u32>,
}

/// The rounds the network draws from `checks` (a nonce issued after the commitment), each on a
/// tile, with `rows` rows to open.
pub fn rounds(spec: &Spec, checks: &[u8; 32], count: u32, rows: u32) -> Vec<Round> {
    let [tile_key, vector_key, row_key, _] = keys(checks, "gpubridge/v1/probe-checks");
    let n = spec.size;
    (0..count)
        .map(|round| {
            let tile = (word(tile_key, 0, u64::from(round)) % u64::from(spec.tiles.max(1))) as u32;
            let vector = (0..n)
                .map(|j| {
                    let bits = word(vector_key, u64::from(round), u64::from(j / 64));
                    ((bits >> (j % 64)) & 1) as u8
                })
                .collect();
            let mut chosen = std::collections::BTreeSet::new();
            let mut counter = 0u64;
            while chosen.len() < rows.min(n) as usize {
                chosen.insert((word(row_key, u64::from(round), counter) % u64::from(n)) as u32);
                counter += 1;
            }
            Round {
                tile,
                vector,
                rows: chosen.into_iter().collect(),
            }
        })
        .collect()
}

/// A row of C_t, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub row: u32,
    pub values: Vec<i32>,
    /// Its leaf's aunts in the tree over all rows, leaf up.
    pub aunts: Vec<Hash>,
}

/// The probe's answer to a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// C_t·r.
    pub product: Vec<i64>,
    pub rows: Vec<Opened>,
}

/// Why an answer failed. Every one is evidence that the probe did not hold the product.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("answer.{field}: {rule}")]
    Malformed { field: &'static str, rule: String },
    #[error("answer.product: A·(B·r) differs from the answered C·r at row {row} (Freivalds)")]
    Freivalds { row: u32 },
    #[error("answer.rows[{index}]: row {row} does not hash to the committed root at its place")]
    NotCommitted { index: usize, row: u32 },
    #[error("answer.rows[{index}]: row {row} is not A's row times B")]
    WrongRow { index: usize, row: u32 },
}

impl ProbeFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeFailure::Malformed { .. } => "Malformed",
            ProbeFailure::Freivalds { .. } => "Freivalds",
            ProbeFailure::NotCommitted { .. } => "NotCommitted",
            ProbeFailure::WrongRow { .. } => "WrongRow",
        }
    }
}

fn row_leaf(values: &[i32]) -> Hash {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    merkle::leaf(&bytes)
}

fn dot(row: &[i32], vector: &[u8]) -> i64 {
    row.iter()
        .zip(vector)
        .filter(|(_, r)| **r != 0)
        .map(|(v, _)| i64::from(*v))
        .sum()
}

/// Checks `answer` to `round` against the committed `root`, regenerating the tile's matrices
/// from `seed`: O(n²) for Freivalds and O(n²) per opened row.
pub fn verify_round(
    spec: &Spec,
    seed: &[u8; 32],
    root: &Hash,
    round: &Round,
    answer: &Answer,
) -> Result<(), ProbeFailure> {
    let n = spec.size as usize;
    let malformed = |field, rule: String| Err(ProbeFailure::Malformed { field, rule });
    if answer.product.len() != n {
        return malformed(
            "product",
            format!("has {} entries, not {n}", answer.product.len()),
        );
    }
    if answer.rows.len() != round.rows.len()
        || answer
            .rows
            .iter()
            .zip(&round.rows)
            .any(|(o, r)| o.row != *r)
    {
        return malformed("rows", format!("must open exactly rows {:?}", round.rows));
    }
    let a = generate(seed, spec.size, round.tile, Matrix::A);
    let b = generate(seed, spec.size, round.tile, Matrix::B);
    // B·r, then A·(B·r): two matrix-vector products.
    let br: Vec<i64> = (0..n)
        .map(|k| {
            b[k * n..(k + 1) * n]
                .iter()
                .zip(&round.vector)
                .filter(|(_, r)| **r != 0)
                .map(|(v, _)| i64::from(*v))
                .sum()
        })
        .collect();
    for (i, answered) in answer.product.iter().enumerate() {
        let expected: i64 = a[i * n..(i + 1) * n]
            .iter()
            .zip(&br)
            .map(|(x, y)| i64::from(*x) * y)
            .sum();
        if expected != *answered {
            return Err(ProbeFailure::Freivalds { row: i as u32 });
        }
    }
    let total = spec.rows();
    for (index, opened) in answer.rows.iter().enumerate() {
        let row = opened.row;
        if opened.values.len() != n {
            return malformed(
                "rows",
                format!("row {row} has {} values, not {n}", opened.values.len()),
            );
        }
        let place = u64::from(round.tile) * u64::from(spec.size) + u64::from(row);
        if merkle::root_from_aunts(place, total, row_leaf(&opened.values), &opened.aunts)
            != Some(*root)
        {
            return Err(ProbeFailure::NotCommitted { index, row });
        }
        let i = row as usize;
        let expected = multiply_row(&a[i * n..(i + 1) * n], &b, n);
        if expected != opened.values {
            return Err(ProbeFailure::WrongRow { index, row });
        }
    }
    Ok(())
}

/// A's row times B.
fn multiply_row(a_row: &[i8], b: &[i8], n: usize) -> Vec<i32> {
    let mut out = vec![0i32; n];
    for (k, &aik) in a_row.iter().enumerate() {
        for (o, &bkj) in out.iter_mut().zip(&b[k * n..(k + 1) * n]) {
            *o += i32::from(aik) * i32::from(bkj);
        }
    }
    out
}

/// The row hashes a probe committed to: with a tile's product, made again or fetched from where
/// it is held, they answer any round.
pub struct Rows {
    spec: Spec,
    tree: merkle::Tree,
}

/// The Merkle leaves of a tile's product rows, in row order.
pub fn row_leaves(product: &[i32], size: u32) -> Vec<Hash> {
    product.chunks(size.max(1) as usize).map(row_leaf).collect()
}

impl Rows {
    /// `leaves`: every tile's [`row_leaves`], in tile order.
    pub fn new(spec: Spec, leaves: Vec<Hash>) -> Rows {
        Rows {
            spec,
            tree: merkle::Tree::new(leaves),
        }
    }

    /// The Merkle root over every row of every product, in tile order.
    pub fn commitment(&self) -> Hash {
        self.tree.root()
    }

    /// The answer to `round` from its tile's product `c`.
    pub fn answer(&self, round: &Round, c: &[i32]) -> Answer {
        let n = self.spec.size as usize;
        Answer {
            product: c.chunks(n).map(|row| dot(row, &round.vector)).collect(),
            rows: round
                .rows
                .iter()
                .map(|&row| {
                    let place = round.tile as usize * n + row as usize;
                    Opened {
                        row,
                        values: c[row as usize * n..(row as usize + 1) * n].to_vec(),
                        aunts: self.tree.aunts(place),
                    }
                })
                .collect(),
        }
    }
}

/// The probe's side on the CPU: the same arithmetic a GPU runs, for tests and for machines
/// without one.
pub struct Prover {
    rows: Rows,
    products: Products,
}

/// Where a prover's products are when the checks come.
enum Products {
    /// Every tile's, as a GPU holds them in its memory.
    Held(Vec<Vec<i32>>),
    /// None: each checked tile is multiplied again from the seed (the CPU stand-in, whose host
    /// memory is the lease's, not the GPU's).
    Remade([u8; 32]),
}

fn product(seed: &[u8; 32], size: u32, tile: u32) -> Vec<i32> {
    let a = generate(seed, size, tile, Matrix::A);
    let b = generate(seed, size, tile, Matrix::B);
    multiply(&a, &b, size)
}

impl Prover {
    /// Generates and multiplies every tile, holding the products.
    pub fn run(spec: Spec, seed: &[u8; 32]) -> Prover {
        let products = (0..spec.tiles)
            .map(|t| product(seed, spec.size, t))
            .collect();
        Prover::holding(spec, products)
    }

    /// Generates and multiplies every tile, keeping only the rows' hashes: memory for the
    /// commitment, not the products, which [`Prover::answer`] makes again for a checked tile.
    pub fn remaking(spec: Spec, seed: &[u8; 32]) -> Prover {
        let leaves = (0..spec.tiles)
            .flat_map(|t| row_leaves(&product(seed, spec.size, t), spec.size))
            .collect();
        Prover {
            rows: Rows::new(spec, leaves),
            products: Products::Remade(*seed),
        }
    }

    /// A prover holding `products` (one per tile), whatever they are.
    pub fn holding(spec: Spec, products: Vec<Vec<i32>>) -> Prover {
        let leaves = products
            .iter()
            .flat_map(|c| row_leaves(c, spec.size))
            .collect();
        Prover {
            rows: Rows::new(spec, leaves),
            products: Products::Held(products),
        }
    }

    /// The Merkle root over every row of every product, in tile order.
    pub fn commitment(&self) -> Hash {
        self.rows.commitment()
    }

    pub fn answer(&self, round: &Round) -> Answer {
        match &self.products {
            Products::Held(products) => self.rows.answer(round, &products[round.tile as usize]),
            Products::Remade(seed) => self
                .rows
                .answer(round, &product(seed, self.rows.spec.size, round.tile)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [5; 32];
    const SPEC: Spec = Spec { size: 48, tiles: 3 };

    fn checks(i: u8) -> [u8; 32] {
        let mut c = [0; 32];
        c[0] = i;
        c[31] = 0xc4;
        c
    }

    #[test]
    fn an_honest_probe_passes_every_round_holding_its_products_or_making_them_again() {
        let held = Prover::run(SPEC, &SEED);
        let remade = Prover::remaking(SPEC, &SEED);
        let root = held.commitment();
        assert_eq!(remade.commitment(), root);
        for round in rounds(&SPEC, &checks(1), 8, 4) {
            assert_eq!(round.rows.len(), 4);
            let answer = held.answer(&round);
            assert_eq!(remade.answer(&round), answer);
            assert_eq!(verify_round(&SPEC, &SEED, &root, &round, &answer), Ok(()));
        }
    }

    #[test]
    fn the_checks_are_the_second_nonces_and_cover_every_tile() {
        let a = rounds(&SPEC, &checks(1), 30, 4);
        assert_eq!(a, rounds(&SPEC, &checks(1), 30, 4));
        assert_ne!(a, rounds(&SPEC, &checks(2), 30, 4));
        for tile in 0..SPEC.tiles {
            assert!(
                a.iter().any(|r| r.tile == tile),
                "tile {tile} never checked"
            );
        }
        let ones: usize = a
            .iter()
            .map(|r| r.vector.iter().filter(|&&b| b == 1).count())
            .sum();
        let all = 30 * SPEC.size as usize;
        assert!(
            ones * 10 > all * 4 && ones * 10 < all * 6,
            "{ones} of {all}: r is not fair"
        );
    }

    /// A probe that skipped work: one element of one product is wrong, and it answers from
    /// what it holds.
    fn cheating(tile: u32, row: usize, column: usize) -> Prover {
        let n = SPEC.size as usize;
        let mut products: Vec<Vec<i32>> = (0..SPEC.tiles)
            .map(|t| product(&SEED, SPEC.size, t))
            .collect();
        products[tile as usize][row * n + column] += 1;
        Prover::holding(SPEC, products)
    }

    #[test]
    fn a_wrong_product_survives_a_round_only_when_r_misses_it() {
        let (tile, row, column) = (1, 7, 11);
        let prover = cheating(tile, row, column);
        let root = prover.commitment();
        let (mut caught, mut on_tile) = (0, 0);
        for i in 0..64 {
            for round in rounds(&SPEC, &checks(i), 4, 0) {
                if round.tile != tile {
                    continue;
                }
                on_tile += 1;
                let verdict = verify_round(&SPEC, &SEED, &root, &round, &prover.answer(&round));
                if round.vector[column] == 1 {
                    assert_eq!(verdict, Err(ProbeFailure::Freivalds { row: row as u32 }));
                    caught += 1;
                } else {
                    assert_eq!(verdict, Ok(()), "r misses the wrong element");
                }
            }
        }
        // r's entry is a fair coin: about half the rounds on the tile catch it.
        assert!(
            caught * 4 > on_tile && caught * 4 < on_tile * 3,
            "{caught} of {on_tile}"
        );
    }

    #[test]
    fn a_right_answer_over_a_wrong_commitment_is_caught_by_the_opened_row() {
        let (tile, row, column) = (0, 5, 2);
        let liar = cheating(tile, row, column);
        let honest = Prover::run(SPEC, &SEED);
        let root = liar.commitment();
        let round = Round {
            tile,
            vector: vec![1; SPEC.size as usize],
            rows: vec![row as u32],
        };
        // C·r from the true product, with the committed (wrong) row opened.
        let mut answer = honest.answer(&round);
        answer.rows = liar.answer(&round).rows;
        assert_eq!(
            verify_round(&SPEC, &SEED, &root, &round, &answer),
            Err(ProbeFailure::WrongRow {
                index: 0,
                row: row as u32
            })
        );
        // The true row opened against the liar's root is not what it committed to.
        let honest_rows = honest.answer(&round);
        assert_eq!(
            verify_round(&SPEC, &SEED, &root, &round, &honest_rows),
            Err(ProbeFailure::NotCommitted {
                index: 0,
                row: row as u32
            })
        );
    }

    #[test]
    fn an_answer_that_is_not_the_rounds_is_refused_naming_its_field() {
        let prover = Prover::run(SPEC, &SEED);
        let root = prover.commitment();
        let round = rounds(&SPEC, &checks(3), 1, 2).remove(0);
        let good = prover.answer(&round);
        let mut short = good.clone();
        short.product.pop();
        assert_eq!(
            verify_round(&SPEC, &SEED, &root, &round, &short)
                .unwrap_err()
                .to_string(),
            "answer.product: has 47 entries, not 48"
        );
        let mut fewer = good.clone();
        fewer.rows.pop();
        assert_eq!(
            verify_round(&SPEC, &SEED, &root, &round, &fewer)
                .unwrap_err()
                .kind(),
            "Malformed"
        );
        // Another row's values in the place of a requested one.
        let mut moved = good.clone();
        moved.rows[0].values = prover
            .answer(&Round {
                rows: vec![round.rows[1]],
                ..round.clone()
            })
            .rows[0]
            .values
            .clone();
        assert_eq!(
            verify_round(&SPEC, &SEED, &root, &round, &moved)
                .unwrap_err()
                .kind(),
            "NotCommitted"
        );
        // The right matrices under another seed are another challenge.
        let other = Prover::run(SPEC, &[6; 32]);
        let replayed = other.answer(&round);
        assert_eq!(
            verify_round(&SPEC, &SEED, &other.commitment(), &round, &replayed)
                .unwrap_err()
                .kind(),
            "Freivalds"
        );
    }
}
