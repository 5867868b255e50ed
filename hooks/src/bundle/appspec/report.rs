//! What a check of a bundle found: each [`Problem`] with its [`Severity`] and the file and line
//! it is about, and the [`Report`] `lint-bundle` prints.

use std::fmt;

/// How bad a problem is: an error makes the agent refuse or fail the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding: the file, the field (or line), and what is wrong with the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub severity: Severity,
    pub file: String,
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn error(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn warning(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, field, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.field.is_empty() {
            write!(f, "{kind}: {}: {}", self.file, self.message)
        } else {
            write!(f, "{kind}: {}: {}: {}", self.file, self.field, self.message)
        }
    }
}

/// What the lint found, and what it could not check.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
    /// Checks that were skipped, and why.
    pub notes: Vec<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems.iter().filter(|p| p.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        let (e, w) = (self.errors(), self.warnings());
        writeln!(
            f,
            "{e} error{}, {w} warning{}",
            if e == 1 { "" } else { "s" },
            if w == 1 { "" } else { "s" }
        )
    }
}
