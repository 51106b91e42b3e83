//! Checks one requirement line of a `requirements.txt` against PEP 508 (name, extras, version
//! specifiers or a direct `@ URL`, environment markers), so a mistyped line is refused when the
//! function is registered instead of failing its first call with pip's error.
//!
//! The check is strict only where pip is: a line it cannot tell apart from a requirement
//! (a URL, a path, an archive's file name, a line with `${VARIABLE}`s pip expands) is left
//! for pip, as are per-requirement options after the requirement (`--hash=...`).

/// The comparison operators of version specifiers and markers, longest first.
const OPERATORS: &[&str] = &["===", "==", "!=", "<=", ">=", "~=", "<", ">"];

/// The environment marker variables, with the legacy dotted spellings pip still accepts.
const MARKER_VARIABLES: &[&str] = &[
    "python_version",
    "python_full_version",
    "os_name",
    "sys_platform",
    "platform_release",
    "platform_system",
    "platform_version",
    "platform_machine",
    "platform_python_implementation",
    "implementation_name",
    "implementation_version",
    "extra",
    "os.name",
    "sys.platform",
    "platform.version",
    "platform.machine",
    "platform.python_implementation",
    "python_implementation",
];

/// What is wrong with a line that is not a requirement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotARequirement(String);

/// Refuses a requirement line (normalized: words joined by one space, no comment) that is not
/// a PEP 508 requirement, saying what is wrong. Option lines are not for this check.
pub fn check(line: &str) -> Result<(), NotARequirement> {
    // Per-requirement options (`--hash=...`, `--config-settings ...`, `-C key=value`) follow
    // the requirement.
    let option = line
        .match_indices(" -")
        .find(|(at, _)| line[at + 2..].starts_with(|c: char| c == '-' || c.is_ascii_alphabetic()));
    let requirement = match option {
        Some((at, _)) => &line[..at],
        None => line,
    };
    if left_for_pip(requirement) {
        return Ok(());
    }
    let mut p = Parser::new(requirement);
    p.name("a package name")?;
    p.skip_spaces();
    if p.eat("[") {
        p.extras()?;
    }
    p.skip_spaces();
    if p.eat("@") {
        p.skip_spaces();
        p.url()?;
        p.skip_spaces();
    } else {
        p.specifiers()?;
        p.skip_spaces();
    }
    let marked = p.eat(";");
    if marked {
        p.skip_spaces();
        p.marker()?;
    }
    p.skip_spaces();
    match (p.at_end(), marked) {
        (true, _) => Ok(()),
        (false, true) => Err(p.unexpected("`and`, `or` or the end of the marker")),
        (false, false) => Err(
            p.unexpected("a version specifier (such as ==1.2 or >=1.2,<2), `@ URL` or `; marker`")
        ),
    }
}

/// Whether pip reads `requirement` as something other than a named requirement: a URL, a
/// local path or archive, or a line with environment variables it expands first.
fn left_for_pip(requirement: &str) -> bool {
    let first = requirement.split(' ').next().unwrap_or_default();
    first.contains("://")
        || first.starts_with("file:")
        || first.starts_with(['.', '/', '~'])
        || [".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2"]
            .iter()
            .any(|ext| first.ends_with(ext))
        || requirement.contains("${")
}

/// A cursor over one requirement.
struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser { text, at: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.at..]
    }

    fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// Consumes `token` if the text goes on with it.
    fn eat(&mut self, token: &str) -> bool {
        let found = self.rest().starts_with(token);
        if found {
            self.at += token.len();
        }
        found
    }

    /// Consumes the longest run of characters that `keep` accepts.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        self.at += len;
        &rest[..len]
    }

    /// What an error says of the text where `wanted` was expected.
    fn unexpected(&self, wanted: &str) -> NotARequirement {
        let rest = self.rest();
        NotARequirement(if rest.is_empty() {
            format!("expected {wanted} at the end")
        } else {
            format!("expected {wanted} at {rest:?}")
        })
    }

    /// A project or extra name: letters and digits, with `.`, `_` and `-` inside.
    fn name(&mut self, what: &str) -> Result<&'a str, NotARequirement> {
        let name = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let ends_well = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        if name.is_empty() {
            return Err(self.unexpected(what));
        }
        if !ends_well(name.chars().next()) || !ends_well(name.chars().last()) {
            return Err(NotARequirement(format!(
                "{name:?} is not a valid name: it must start and end with a letter or digit"
            )));
        }
        Ok(name)
    }

    /// The extras after `[`, up to and including `]`.
    fn extras(&mut self) -> Result<(), NotARequirement> {
        self.skip_spaces();
        if self.eat("]") {
            return Ok(());
        }
        loop {
            self.name("an extra's name")?;
            self.skip_spaces();
            if self.eat("]") {
                return Ok(());
            }
            if !self.eat(",") {
                return Err(self.unexpected("`,` or `]` in the extras"));
            }
            self.skip_spaces();
        }
    }

    /// A direct reference's URL: everything up to the next space (so a `;` right after it is
    /// part of it, and a marker needs a space before its `;`).
    fn url(&mut self) -> Result<(), NotARequirement> {
        let url = self.take_while(|c| c != ' ');
        if !url.contains(':') {
            Err(NotARequirement(format!("{url:?} after `@` is not a URL")))
        } else if url.ends_with(';') {
            Err(NotARequirement(
                "a marker after a URL needs a space before its `;`".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Version specifiers, if any: `op version` joined by commas, optionally in parentheses.
    fn specifiers(&mut self) -> Result<(), NotARequirement> {
        let parenthesized = self.eat("(");
        self.skip_spaces();
        if !parenthesized && (self.at_end() || self.rest().starts_with(';')) {
            return Ok(());
        }
        loop {
            self.specifier()?;
            self.skip_spaces();
            if !self.eat(",") {
                break;
            }
            self.skip_spaces();
        }
        if parenthesized && !self.eat(")") {
            return Err(self.unexpected("`)` after the version specifiers"));
        }
        Ok(())
    }

    /// One `op version`.
    fn specifier(&mut self) -> Result<(), NotARequirement> {
        let Some(op) = OPERATORS.iter().find(|op| self.eat(op)) else {
            let hint = if self.rest().starts_with('=') {
                " (`=` alone is not one: use `==`; `=>` and `=<` are written `>=` and `<=`)"
            } else {
                ""
            };
            return Err(self.unexpected(&format!(
                "a version operator (==, !=, <=, >=, <, >, ~= or ===){hint}"
            )));
        };
        self.skip_spaces();
        let version = if *op == "===" {
            self.take_while(|c| !matches!(c, ' ' | ',' | ';' | ')'))
        } else {
            self.take_while(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_')
            })
        };
        if version.is_empty() {
            return Err(self.unexpected(&format!("a version after `{op}`")));
        }
        Ok(())
    }

    /// An environment marker: comparisons joined by `and` and `or`, in parentheses as needed.
    fn marker(&mut self) -> Result<(), NotARequirement> {
        self.marker_and()?;
        while self.keyword("or") {
            self.marker_and()?;
        }
        Ok(())
    }

    fn marker_and(&mut self) -> Result<(), NotARequirement> {
        self.marker_atom()?;
        while self.keyword("and") {
            self.marker_atom()?;
        }
        Ok(())
    }

    fn marker_atom(&mut self) -> Result<(), NotARequirement> {
        self.skip_spaces();
        if self.eat("(") {
            self.marker()?;
            self.skip_spaces();
            return match self.eat(")") {
                true => Ok(()),
                false => Err(self.unexpected("`)` in the marker")),
            };
        }
        self.marker_value()?;
        self.skip_spaces();
        let compared = OPERATORS.iter().any(|op| self.eat(op));
        let contained =
            !compared && (self.keyword("in") || (self.keyword("not") && self.keyword("in")));
        if !(compared || contained) {
            return Err(self.unexpected("a marker operator (==, !=, <, >, in, not in...)"));
        }
        self.marker_value()
    }

    /// A quoted string or a marker variable.
    fn marker_value(&mut self) -> Result<(), NotARequirement> {
        self.skip_spaces();
        for quote in ["\"", "'"] {
            if self.eat(quote) {
                return match self.rest().find(quote) {
                    Some(end) => {
                        self.at += end + 1;
                        Ok(())
                    }
                    None => Err(NotARequirement(format!(
                        "a marker string opened with {quote} is not closed"
                    ))),
                };
            }
        }
        let word = self.take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'));
        if MARKER_VARIABLES.contains(&word) {
            Ok(())
        } else if word.is_empty() {
            Err(self.unexpected("a marker variable or a quoted string"))
        } else {
            Err(NotARequirement(format!(
                "{word:?} is not a marker variable (such as python_version, sys_platform or platform_machine); quote a value"
            )))
        }
    }

    /// Consumes the word `word` (after spaces, and followed by a space, `(` or a quote).
    fn keyword(&mut self, word: &str) -> bool {
        let start = self.at;
        self.skip_spaces();
        let rest = self.rest();
        let after = rest.strip_prefix(word);
        if after.is_some_and(|after| after.starts_with([' ', '(', '"', '\''])) {
            self.at += word.len();
            true
        } else {
            self.at = start;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_pip_accepts_pass() {
        for line in [
            "six",
            "requests==2.31.0",
            "numpy>=1.26,<2",
            "numpy >= 1.26 , < 2",
            "Django~=4.2",
            "pkg===weird-version",
            "zope.interface!=5.0.*",
            "foo_bar-baz.qux==1!2.0+local.7",
            "requests[security,socks]>=2",
            "requests [ security ] (>=2.0)",
            "pkg[]",
            "pkg @ https://example.com/pkg-1.0-py3-none-any.whl#sha256=abc",
            "pkg@https://example.com/pkg.whl ; python_version >= \"3.8\"",
            "pywin32; sys_platform == 'win32'",
            "pkg ; python_version < \"3.11\" and (platform_machine == 'x86_64' or platform_machine == 'aarch64')",
            "pkg; 'linux' in sys_platform",
            "pkg; extra not in 'a b'",
            "pkg; os.name == 'posix'",
            "six==1.16.0 --hash=sha256:1e61c3",
            "pkg==1.0 -C key=value",
            "https://example.com/pkg-1.0-py3-none-any.whl",
            "./wheels/pkg-1.0-py3-none-any.whl",
            "pkg-1.0-py3-none-any.whl",
            "pkg==${PKG_VERSION}",
        ] {
            assert_eq!(check(line), Ok(()), "{line}");
        }
    }

    #[test]
    fn mistyped_requirements_are_refused_saying_why() {
        for (line, says) in [
            ("numpy=1.26", "`=` alone is not one"),
            ("numpy=>1.26", "`=>` and `=<` are written"),
            (
                "pandas 2.0",
                "a version operator (==, !=, <=, >=, <, >, ~= or ===) at \"2.0\"",
            ),
            ("numpy==", "a version after `==`"),
            ("numpy>=1.0,", "a version operator"),
            ("requests[security", "`,` or `]`"),
            ("-pkg", "not a valid name"),
            ("pkg.", "not a valid name"),
            ("pkg (>=1.0", "`)` after the version"),
            ("pkg @ nowhere", "is not a URL"),
            (
                "pkg @ https://x/p.whl; python_version > '3'",
                "needs a space",
            ),
            ("pkg; python_version >= 3.8", "not a marker variable"),
            ("pkg; python_verison == '3.8'", "not a marker variable"),
            ("pkg; python_version == '3.8", "is not closed"),
            ("pkg; (python_version == '3.8'", "`)` in the marker"),
            ("pkg; python_version", "a marker operator"),
            ("pkg;", "a marker variable or a quoted string at the end"),
            ("pkg==1.0 extra", "a version specifier"),
            (
                "pkg; os_name == 'posix' andalso",
                "`and`, `or` or the end of the marker",
            ),
        ] {
            let err = check(line).expect_err(line).to_string();
            assert!(err.contains(says), "{line}: {err}");
        }
    }
}
