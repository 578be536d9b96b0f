//! `COPY/ADD --chmod`: an octal mode, or a symbolic one in chmod(1)'s grammar
//! (`go-w`, `u=rw,g=r,o=r`, `a+X`), as BuildKit accepts them
//! (dockerfile2llb/convert_copy.go with tonistiigi/dchapes-mode, umask 0).

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// An octal mode, at most 07777: every copied entry (but symlinks) gets
    /// it, and so do the directories the copy creates.
    Octal(u32),
    /// A symbolic mode, applied to each copied entry's own mode; the
    /// directories the copy creates stay 0755 (BuildKit).
    Symbolic(Symbolic),
}

/// The error BuildKit gives for a value that is no mode at all.
pub(crate) fn invalid_chmod(text: &str) -> String {
    format!("invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777")
}

impl Chmod {
    /// Parses a `--chmod` value; the error is BuildKit's text.
    pub fn parse(text: &str) -> Result<Chmod, String> {
        if let Ok(mode) = u32::from_str_radix(text, 8) {
            return if mode <= 0o7777 {
                Ok(Chmod::Octal(mode))
            } else {
                Err(invalid_chmod(text))
            };
        }
        // A value that looks numeric is reported as a bad octal mode (BuildKit).
        if text.starts_with(|c: char| c.is_ascii_digit()) || text.is_empty() {
            return Err(invalid_chmod(text));
        }
        Symbolic::parse(text).map(Chmod::Symbolic)
    }

    /// The mode a copied entry gets from its source mode.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(s) => s.apply(mode, is_dir),
        }
    }

    /// The mode of a directory the copy creates (destination, missing parents).
    pub fn created_dir_mode(&self) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(_) => 0o755,
        }
    }

    /// The value as the cache key encodes it.
    pub(crate) fn key_text(&self) -> String {
        match self {
            Chmod::Octal(m) => format!("{m:o}"),
            Chmod::Symbolic(s) => s.text.clone(),
        }
    }
}

/// One `who op perms` clause of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    /// Bits of the classes named (u: 04700, g: 02070, o: 01007); all for none.
    who: u32,
    op: char,
    perms: Perms,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perms {
    /// From `rwxXst`: plain bits (before masking by `who`) and whether `X` was given.
    Bits { bits: u32, big_x: bool },
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbolic {
    text: String,
    clauses: Vec<Clause>,
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o1007;

impl Symbolic {
    fn parse(text: &str) -> Result<Symbolic, String> {
        let bad = || {
            format!(
                "invalid chmod parameter: '{text}': not a symbolic mode such as u+x, go-w or a=rX"
            )
        };
        let mut clauses = Vec::new();
        for part in text.split(',') {
            let mut chars = part.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => USER,
                    'g' => GROUP,
                    'o' => OTHER,
                    'a' => USER | GROUP | OTHER,
                    _ => break,
                };
                chars.next();
            }
            let mut any = false;
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                any = true;
                let perms = match chars.peek() {
                    Some(&c @ ('u' | 'g' | 'o')) => {
                        chars.next();
                        Perms::Copy(c)
                    }
                    _ => {
                        let (mut bits, mut big_x) = (0, false);
                        while let Some(&c) = chars.peek() {
                            bits |= match c {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                'X' => {
                                    big_x = true;
                                    0
                                }
                                's' => 0o6000,
                                't' => 0o1000,
                                _ => break,
                            };
                            chars.next();
                        }
                        Perms::Bits { bits, big_x }
                    }
                };
                clauses.push(Clause { who, op, perms });
            }
            if !any {
                return Err(bad());
            }
        }
        Ok(Symbolic {
            text: text.to_string(),
            clauses,
        })
    }

    fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let mut mode = mode & 0o7777;
        for c in &self.clauses {
            let who = if c.who == 0 {
                USER | GROUP | OTHER
            } else {
                c.who
            };
            let bits = match &c.perms {
                Perms::Bits { bits, big_x } => {
                    let x = if *big_x && (is_dir || mode & 0o111 != 0) {
                        0o111
                    } else {
                        0
                    };
                    (bits | x) & who
                }
                Perms::Copy(class) => {
                    let rwx = match class {
                        'u' => (mode >> 6) & 7,
                        'g' => (mode >> 3) & 7,
                        _ => mode & 7,
                    };
                    (rwx << 6 | rwx << 3 | rwx) & who & 0o777
                }
            };
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !(who & 0o7777)) | bits,
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(text: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(text).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal_modes_and_buildkits_errors() {
        assert_eq!(Chmod::parse("0644"), Ok(Chmod::Octal(0o644)));
        assert_eq!(Chmod::parse("7777"), Ok(Chmod::Octal(0o7777)));
        assert_eq!(
            Chmod::parse("10000").unwrap_err(),
            "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"
        );
        assert_eq!(
            Chmod::parse("64a").unwrap_err(),
            "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"
        );
        assert!(Chmod::parse("u+q").is_err());
        assert!(Chmod::parse("go").is_err());
    }

    /// The cases of BuildKit's testChmodNonOctal, against what chmod(1) gives.
    #[test]
    fn symbolic_modes_as_chmod() {
        assert_eq!(sym("go-w", 0o666, false), 0o644);
        assert_eq!(sym("u=rw,g=r,o=r", 0o666, false), 0o644);
        assert_eq!(sym("a+X", 0o666, false), 0o666);
        assert_eq!(sym("a+X", 0o744, false), 0o755);
        assert_eq!(sym("go-w", 0o124, true), 0o104);
        assert_eq!(sym("u+rw,g+r,o-x,o+w", 0o124, true), 0o766);
        assert_eq!(sym("a+X", 0o124, true), 0o135);
        assert_eq!(sym("g=u", 0o740, false), 0o770);
        assert_eq!(sym("u+s", 0o755, false), 0o4755);
        assert_eq!(sym("=r", 0o4777, false), 0o444);
    }
}
