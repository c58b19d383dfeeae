//! Union-find over `0..n`, for grouping alias evidence into routers: the agent groups one
//! run's answers, the coordinator merges runs from every vantage.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n).collect(),
        }
    }

    /// The representative of `x`'s set (the smallest member, as `union` keeps it).
    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    pub fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }

    /// Sets of more than one member, members in index order, sets by smallest member.
    pub fn components(&mut self) -> Vec<Vec<usize>> {
        let mut by_root: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..self.parent.len() {
            let r = self.find(i);
            by_root.entry(r).or_default().push(i);
        }
        by_root.into_values().filter(|c| c.len() > 1).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_join_sets_and_singletons_are_left_out() {
        let mut u = UnionFind::new(6);
        u.union(4, 1);
        u.union(1, 3);
        u.union(5, 2);
        assert_eq!(u.find(4), 1);
        assert_eq!(u.components(), vec![vec![1, 3, 4], vec![2, 5]]);
    }
}
