//! Random changes to a directory tree, the way people and deploy tools make them: creates,
//! writes, appends, renames, deletes, mode changes, type changes, directory moves and
//! deletions. The same seed gives the same changes to the same tree.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fs_err as fs;

/// A small deterministic generator (xorshift).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// Every directory (with `root` first) and every other entry below `root`.
fn listing(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut others) = (vec![root.to_owned()], Vec::new());
    let mut i = 0;
    while i < dirs.len() {
        let mut items: Vec<_> = fs::read_dir(&dirs[i])
            .map(|l| l.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        items.sort();
        for p in items {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                dirs.push(p);
            } else {
                others.push(p);
            }
        }
        i += 1;
    }
    (dirs, others)
}

/// Makes `ops` random changes under `root`; returns a line per change.
pub fn churn(root: &Path, rng: &mut Rng, ops: usize) -> Vec<String> {
    let mut done = Vec::new();
    let mut n = 0;
    while done.len() < ops {
        n += 1;
        let (dirs, files) = listing(root);
        let subdirs = &dirs[1..];
        let dir = rng.pick(&dirs).expect("root is listed").clone();
        let name = format!("n{}-{}", n, rng.below(1000));
        let body = |rng: &mut Rng| format!("{}\n", rng.next_u64()).repeat(1 + rng.below(50));
        let what = match rng.below(11) {
            0 | 1 => {
                let p = dir.join(format!("{name}.txt"));
                fs::write(&p, body(rng)).map(|_| format!("create {}", p.display()))
            }
            2 | 3 => match rng.pick(&files).filter(|p| !p.is_symlink()) {
                Some(p) => fs::write(p, body(rng)).map(|_| format!("write {}", p.display())),
                None => continue,
            },
            4 => match rng.pick(&files) {
                Some(p) => {
                    let to = rng.pick(&dirs).expect("root").join(&name);
                    fs::rename(p, &to).map(|_| format!("rename {} {}", p.display(), to.display()))
                }
                None => continue,
            },
            5 => match rng.pick(&files) {
                Some(p) => fs::remove_file(p).map(|_| format!("delete {}", p.display())),
                None => continue,
            },
            6 => {
                let p = rng.pick(&files).or(rng.pick(subdirs));
                match p.filter(|p| !p.is_symlink()) {
                    Some(p) => {
                        let mode = if p.is_dir() {
                            0o750
                        } else {
                            0o600 + rng.below(2) as u32 * 0o44
                        };
                        fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                            .map(|_| format!("chmod {} {mode:o}", p.display()))
                    }
                    None => continue,
                }
            }
            7 => {
                let p = dir.join(&name);
                fs::create_dir(&p)
                    .and_then(|_| fs::write(p.join("inside.txt"), body(rng)))
                    .map(|_| format!("mkdir {}", p.display()))
            }
            8 => {
                // Move a directory somewhere that is not inside itself.
                let Some(d) = rng.pick(subdirs).cloned() else {
                    continue;
                };
                let to_parent = rng.pick(&dirs).expect("root").clone();
                if to_parent.starts_with(&d) {
                    continue;
                }
                let to = to_parent.join(&name);
                fs::rename(&d, &to).map(|_| format!("move dir {} {}", d.display(), to.display()))
            }
            9 => match rng.pick(subdirs) {
                Some(d) if rng.below(3) == 0 => {
                    fs::remove_dir_all(d).map(|_| format!("delete dir {}", d.display()))
                }
                _ => {
                    let p = dir.join(format!("{name}.link"));
                    std::os::unix::fs::symlink("target", &p)
                        .map(|_| format!("symlink {}", p.display()))
                }
            },
            _ => match rng.pick(&files) {
                // A file becomes a directory.
                Some(p) => fs::remove_file(p)
                    .and_then(|_| fs::create_dir(p))
                    .and_then(|_| fs::write(p.join("was-a-file"), body(rng)))
                    .map(|_| format!("file to dir {}", p.display())),
                None => continue,
            },
        };
        done.push(what.unwrap_or_else(|e| format!("failed: {e}")));
    }
    done
}
