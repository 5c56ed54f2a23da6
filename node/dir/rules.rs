//! Path rules in gitignore syntax, for `exclude` (paths the origin never publishes) and
//! `keep` (paths a receiving node owns locally). Matching is the `ignore` crate's gitignore
//! matcher, so the rules mean what they mean in a `.gitignore`: `*.swp` at any depth, `.git/`
//! a directory of that name anywhere, `/info/` only at the top, `cache/**/*.tmp` anchored,
//! `!keep.me` re-including a path.

use std::fmt;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// A compiled list of gitignore patterns; matched against paths relative to `dir`.
#[derive(Clone)]
pub struct Rules {
    patterns: Vec<String>,
    matcher: Gitignore,
}

impl Rules {
    /// Compiles `patterns`; the error names the first bad one and why.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut b = GitignoreBuilder::new("");
        for p in patterns {
            if p.trim().is_empty() {
                return Err("an empty pattern".to_owned());
            }
            b.add_line(None, p)
                .map_err(|e| format!("pattern {p:?}: {e}"))?;
        }
        let matcher = b.build().map_err(|e| e.to_string())?;
        Ok(Rules {
            patterns: patterns.to_vec(),
            matcher,
        })
    }

    /// No rules: nothing matches.
    pub fn none() -> Self {
        Rules::new(&[]).expect("no patterns compile")
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `rel` itself matches (for a walk from the top, which has checked the parents).
    pub fn matches(&self, rel: &str, is_dir: bool) -> bool {
        self.matched(rel, is_dir).is_some()
    }

    /// The pattern `rel` itself matches, if any (a `!` re-include is no match).
    pub fn matched(&self, rel: &str, is_dir: bool) -> Option<&str> {
        if self.patterns.is_empty() || rel.is_empty() {
            return None;
        }
        match self.matcher.matched(rel, is_dir) {
            ignore::Match::Ignore(g) => Some(g.original()),
            _ => None,
        }
    }

    /// Whether `rel` or any directory above it matches (for a path seen on its own, such as
    /// an event's or a manifest entry's).
    pub fn covers(&self, rel: &str, is_dir: bool) -> bool {
        if self.patterns.is_empty() || rel.is_empty() {
            return false;
        }
        let mut path = rel;
        let mut dir = is_dir;
        loop {
            if self.matches(path, dir) {
                return true;
            }
            match path.rfind('/') {
                Some(i) => (path, dir) = (&path[..i], true),
                None => return false,
            }
        }
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Rules {}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(p: &[&str]) -> Rules {
        Rules::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn gitignore_meanings() {
        let r = rules(&[
            "*.swp",
            "*~",
            ".git/",
            "/info/",
            "cache/**/*.tmp",
            "!keep.swp",
        ]);
        assert!(r.matches("a.swp", false) && r.matches("deep/down/b.swp", false));
        assert!(!r.matches("keep.swp", false), "re-included");
        assert!(r.matches("index.html~", false));
        assert!(r.matches(".git", true) && r.matches("sub/.git", true));
        assert!(
            !r.matches(".git", false),
            "a file named .git is not the directory"
        );
        assert!(r.matches("info", true) && !r.matches("sub/info", true));
        assert!(r.matches("cache/x/y/z.tmp", false) && r.matches("cache/z.tmp", false));
        assert!(!r.matches("other/cache/z.tmp", false) && !r.matches("cache/z.tmpx", false));
        assert!(r.covers(".git/objects/ab/cd", false));
        assert!(!r.covers("src/main.rs", false));
        assert_eq!(r.matched("x.swp", false), Some("*.swp"));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let e = Rules::new(&["ok".into(), "{a,b".into()]).unwrap_err();
        assert!(e.contains("{a,b"), "{e}");
        assert!(Rules::new(&["  ".into()]).is_err());
    }
}
